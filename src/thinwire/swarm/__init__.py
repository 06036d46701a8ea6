"""Runtime: a swarm of peer processes that train one model over ZeroMQ (tcp:// or ipc://).

`thinwire swarm` launches one process per peer on this machine (launch.py); `thinwire peer`
runs one peer (peer.py), for real multi-host runs. Peers send every update to each other and
average what they receive, so in sync mode every peer ends each step with the same model.
"""
