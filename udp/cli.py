"""The `udp` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from udp.config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.config:
        os.environ["UDP_CONFIG"] = os.path.abspath(args.config)
    os.environ["UDP_STORE"] = args.store or config.store
    if args.public_url:
        os.environ["UDP_PUBLIC_URL"] = args.public_url
    base = f"http://{'localhost' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"Urban data platform: {config.title}")
    print(f"  landing page  {base}/")
    print(f"  SensorThings  {base}/v1.1")
    print(f"  health        {base}/health")
    print(f"  store         {os.environ['UDP_STORE']}")
    sys.stdout.flush()
    uvicorn.run("udp.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=False, proxy_headers=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `udp` command."""
    parser = argparse.ArgumentParser(prog="udp", description="Urban data platform")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the platform")
    serve.add_argument("--config", help="config.yml to load")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--store", help="sqlite:///path.db or postgresql://user@host/db (overrides the config)")
    serve.add_argument("--public-url", help="the URL clients reach the platform at, for links")
    serve.add_argument("--mqtt", help="an external broker, mqtt://host:port")
    serve.add_argument("--mqtt-port", type=int, default=1883)
    serve.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper() if hasattr(args, "log_level") else "WARNING")
    if args.command == "serve":
        return _serve(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
