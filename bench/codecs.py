"""Codec throughput/ratio/error benchmark; same as `thinwire bench codecs` (see --help)."""

import sys

from thinwire.obs.codec_bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
