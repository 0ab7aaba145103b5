"""The ``checkin`` command: one entry point for every process of the system.

Each subcommand imports what it needs lazily, so ``checkin decode`` does not
load the server and ``checkin door`` never loads the network stack.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from core import __version__
from device.config import DECODERS
from server.schema import KEEP_DELETED_DAYS

#: Exit status for a usage or config error, before anything has started.
EXIT_CONFIG = 2
#: Largest ``checkin server --keep-deleted-days`` (a century).
MAX_KEEP_DELETED_DAYS = 36500


def main(argv: Sequence[str] | None = None) -> int:
    from checkin.logs import setup

    parser = _parser()
    args = parser.parse_args(argv)
    setup(verbose=getattr(args, "verbose", False), log_format=args.log_format)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="checkin", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"checkin {__version__}")
    parser.add_argument("--log-format", **_LOG_FORMAT, default="text")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    door = commands.add_parser("door", parents=[_log_options()],
                               help="run a door: camera, decision, LEDs and buzzer")
    door.add_argument("--config", required=True, metavar="FILE", help="the device config (TOML)")
    door.add_argument("--exit-when-done", action="store_true",
                      help="exit 0 once a finite (images:) source is exhausted")
    door.add_argument("-v", "--verbose", action="store_true")
    door.set_defaults(handler=_door)

    decode = commands.add_parser("decode", help="decode QR codes in image files")
    decode.add_argument("paths", nargs="+", metavar="PATH")
    decode.add_argument("--decoder", default="pipeline", choices=DECODERS)
    decode.set_defaults(handler=_decode)

    server = commands.add_parser("server", parents=[_log_options()],
                                 help="run the central server (API and /sync)")
    server.add_argument("--data", default="server-data", metavar="DIR",
                        help="where the server keeps its database and admin token "
                             "(default: ./server-data)")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                             "interface)")
    server.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    server.add_argument("--certfile", metavar="PEM", help="TLS certificate chain (for wss://)")
    server.add_argument("--keyfile", metavar="PEM", help="TLS private key")
    server.add_argument("--new-epoch", action="store_true",
                        help="after restoring the database from a backup (or losing a door): "
                             "give it a new epoch and code key, so every door resyncs from "
                             "a snapshot")
    server.add_argument("--keep-deleted-days", type=_days, default=KEEP_DELETED_DAYS,
                        metavar="N",
                        help="keep each registrant's removal this many days for doors that "
                             "have not synced it; a door offline longer gets a full "
                             f"snapshot instead (default {KEEP_DELETED_DAYS})")
    server.add_argument("--database", type=_database_url, metavar="URL",
                        help="where the data lives: sqlite:///PATH (default: the file in "
                             "--data) or postgresql://USER@HOST:PORT/DB (several servers may "
                             "share one; see docs/scale-out.md)")
    server.add_argument("-v", "--verbose", action="store_true")
    server.set_defaults(handler=_server)
    server_commands = server.add_subparsers(dest="server_command", metavar="{migrate}")
    migrate = server_commands.add_parser(
        "migrate", parents=[_log_options()],
        help="copy a server's data to an empty database (SQLite to PostgreSQL)")
    migrate.add_argument("--from", dest="source", type=_database_url, required=True,
                         metavar="URL", help="the database to copy (sqlite:///PATH)")
    migrate.add_argument("--to", dest="target", type=_database_url, required=True,
                         metavar="URL", help="the empty database to fill (postgresql://...)")
    migrate.add_argument("-v", "--verbose", action="store_true")
    migrate.set_defaults(handler=_migrate)

    sync = commands.add_parser("sync", parents=[_log_options()], help="run a door's sync daemon")
    sync.add_argument("--config", required=True, metavar="FILE", help="the device config (TOML)")
    sync.add_argument("-v", "--verbose", action="store_true")
    sync.set_defaults(handler=_sync)

    status = commands.add_parser("status", help="say what a door device is doing")
    status.add_argument("--config", required=True, metavar="FILE", help="the device config (TOML)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_status)

    config = commands.add_parser("config", help="work with a device config file")
    config_commands = config.add_subparsers(required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="check a device config file without starting anything (exit 0 when "
                      "valid, 2 when not); touches no hardware and no network")
    check.add_argument("file", metavar="FILE", help="the device config (TOML)")
    check.set_defaults(handler=_config_check)

    doctor = commands.add_parser("doctor", help="self-test a door: config, store, server, "
                                                "clock, camera, LEDs and buzzer, disk")
    doctor.add_argument("--config", required=True, metavar="FILE", help="the device config (TOML)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(handler=_doctor)

    provision = commands.add_parser(
        "provision", help="create or reassign doors on the server and write each one's "
                          "config and token (admin token from $CHECKIN_ADMIN_TOKEN)")
    provision.add_argument("--server", required=True, metavar="URL",
                           help="the server's base URL (https://HOST:PORT)")
    provision.add_argument("--template", required=True, metavar="FILE",
                           help="a door config (TOML) every door's config is made from")
    provision.add_argument("--devices", required=True, metavar="CSV",
                           help="one row per door: device_id,session_id")
    provision.add_argument("--out", required=True, metavar="DIR",
                           help="where each door's config and token file are written")
    provision.add_argument("--rotate", action="store_true",
                           help="revoke and issue again every listed door's token")
    provision.add_argument("--ca-file", metavar="PEM",
                           help="the CA certificate the server's TLS certificate is checked with")
    provision.set_defaults(handler=_provision)

    recover = commands.add_parser(
        "recover", help="upload the scans waiting in a store copied off a dead door unit, "
                        "under a new unit's device and token (the file is never written)")
    recover.add_argument("--config", required=True, metavar="FILE",
                         help="the NEW unit's config (TOML): its device id, server and token")
    recover.add_argument("--store", required=True, metavar="PATH",
                         help="the dead unit's store file (checkin.sqlite3, its -wal and "
                              "-shm beside it)")
    recover.add_argument("--json", action="store_true", help="print one JSON object")
    recover.set_defaults(handler=_recover)

    demo = commands.add_parser("demo", help="the whole system on this machine: a server and "
                                            "two doors with scripted cameras")
    demo.add_argument("--once", action="store_true",
                      help="exit when the scenario is over: 0 only if every scripted outcome "
                           "happened (else it runs until Ctrl-C)")
    demo.set_defaults(handler=_demo)
    return parser


#: ``--log-format``, before the command or (for the long-running ones) after it.
_LOG_FORMAT: dict = {"choices": ("text", "json"), "metavar": "{text,json}",
                     "help": "text (under systemd: no timestamps of our own, priorities for "
                             "journald) or json (one object per line, for shipping)"}


def _log_options() -> argparse.ArgumentParser:
    """``--log-format`` after a command too; unset there, it leaves the one before it."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--log-format", **_LOG_FORMAT, default=argparse.SUPPRESS)
    return options


def _days(text: str) -> int:
    """A whole number of days from 0 to :data:`MAX_KEEP_DELETED_DAYS` (argparse type)."""
    try:
        days = int(text)
    except ValueError:
        days = -1
    if not 0 <= days <= MAX_KEEP_DELETED_DAYS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of days from 0 to {MAX_KEEP_DELETED_DAYS}, not {text!r}")
    return days


#: What ``--database``, ``--from`` and ``--to`` accept.
DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def _database_url(text: str) -> str:
    """A database URL (argparse type): ``sqlite:///PATH`` or ``postgresql://...``."""
    if not text.startswith(DATABASE_SCHEMES) or text in DATABASE_SCHEMES:
        raise argparse.ArgumentTypeError(
            f"expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, not {text!r}")
    return text


def _load_config_or_exit(path: str):  # -> DeviceConfig, or exits 2
    from device.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _start_config(path: str, logger: str):  # -> DeviceConfig, or exits 2
    """The config for a long-running process (door, sync): its errors exit 2; the
    problems of the files it names are logged as warnings (`checkin config check` makes
    them errors), as the token may be put in place while the process runs."""
    from device.config import start_warnings

    config = _load_config_or_exit(path)
    for warning in start_warnings(config):
        logging.getLogger(logger).warning("%s", warning)
    return config


def _door(args: argparse.Namespace) -> int:
    from device.door import run_door
    from device.indicators.signals import IndicatorError, Indicators
    from device.scanner.decoders import make_decoder
    from device.scanner.frames import CameraError

    config = _start_config(args.config, "checkin.door")
    log = logging.getLogger("checkin.door")
    try:
        indicators = Indicators.from_config(config.gpio, config.data_dir)
    except IndicatorError as exc:
        log.error("%s", exc)
        return 1
    try:
        return asyncio.run(run_door(config, make_decoder(config.scanner.decoder), indicators,
                                    sys.stdout, exit_when_done=args.exit_when_done))
    except CameraError as exc:
        log.error("%s", exc)
        return 1


def _decode(args: argparse.Namespace) -> int:
    from core.codes import printable
    from device.scanner.decoders import make_decoder
    from device.scanner.images import ImageError, list_images, load_grey

    decoder = make_decoder(args.decoder)
    status = 0
    for given in args.paths:
        for path in list_images(given):
            try:
                grey = load_grey(path)
            except ImageError as exc:
                print(f"checkin decode: {exc}", file=sys.stderr)
                status = 1
                continue
            payloads = decoder.decode(grey)
            for raw in payloads:
                print(f"{path}\t{printable(raw, limit=None)}")
            if not payloads:
                print(f"{path}\t")
    sys.stdout.flush()
    return status


def _server(args: argparse.Namespace) -> int:
    from datetime import timedelta
    from pathlib import Path

    from server.app import run_server

    if bool(args.certfile) != bool(args.keyfile):
        print("checkin server: --certfile and --keyfile go together", file=sys.stderr)
        return EXIT_CONFIG
    return run_server(Path(args.data), args.host, args.port, certfile=args.certfile,
                      keyfile=args.keyfile, new_epoch=args.new_epoch,
                      keep_deleted=timedelta(days=args.keep_deleted_days),
                      database=args.database)


def _migrate(args: argparse.Namespace) -> int:
    from server.migrate import MigrationError, migrate

    try:
        report = asyncio.run(migrate(args.source, args.target))
    except MigrationError as exc:
        print(f"checkin server migrate: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from sync.daemon import run_sync

    config = _start_config(args.config, "checkin.sync")
    if config.server is None:
        print(f"config error in {config.path}: [server] is missing (the sync daemon needs "
              "url and token_file)", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(run_sync(config))


def _status(args: argparse.Namespace) -> int:
    from checkin.status import show_status

    return asyncio.run(show_status(_load_config_or_exit(args.config), sys.stdout,
                                   as_json=args.json))


def _config_check(args: argparse.Namespace) -> int:
    from checkin.configcheck import run

    return run(args)


def _doctor(args: argparse.Namespace) -> int:
    from checkin.doctor import run

    return run(args)


def _provision(args: argparse.Namespace) -> int:
    from checkin.provision import run

    return run(args)


def _recover(args: argparse.Namespace) -> int:
    from checkin.recover import run

    return run(args)


def _demo(args: argparse.Namespace) -> int:
    from checkin.demo import main as demo

    logging.getLogger().setLevel(logging.WARNING)
    return demo(once=args.once)


if __name__ == "__main__":
    sys.exit(main())
