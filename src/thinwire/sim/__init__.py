"""Runtimes: sim (in-process nodes + link model). Runtimes compose codecs, wire and policies."""
