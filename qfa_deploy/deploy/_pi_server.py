"""TVM RPC server for the emulated Raspberry Pi: runs *inside* qemu-aarch64 (device side).

Stand-alone (imports only TVM's runtime and the standard library): the stock ``tvm.exec.rpc_server``
cannot start its ``popen_worker`` under qemu-user (it would exec an aarch64 python without
binfmt_misc), so this binds a loopback socket itself and runs TVM's listen loop in-process,
registered with the tracker. Each session is served in a forked child, as TVM does; a child that
dies ends its session only (TVM's loop would stop the server).
"""

import argparse
import os
import socket
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracker-host", default="127.0.0.1")
    parser.add_argument("--tracker-port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)

    from tvm.rpc import server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1)
    port = sock.getsockname()[1]
    print(f"qfa emulated-pi RPC server on {args.host}:{port}, key {args.key}, "
          f"tracker {args.tracker_host}:{args.tracker_port}", flush=True)
    home = os.getcwd()
    while True:
        try:
            server._listen_loop(sock, port, args.key, (args.tracker_host, args.tracker_port), None, args.host)
        except RuntimeError as exc:
            # A session's forked worker died (e.g. a crashing library): that session fails on the
            # client's side; the board registers again and keeps serving, as a fleet board should.
            print(f"session failed ({exc}); serving again", flush=True)
            os.chdir(home)  # TVM left us in the failed session's folder


if __name__ == "__main__":
    sys.exit(main())
