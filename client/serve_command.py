"""``liaison serve``, in a module of its own: a node's start-up is timed (issue 10), so
this path loads nothing the node does not need (not the client library, not the other
commands), and unlocks the keys while the server's modules load."""

from __future__ import annotations

import argparse
import gc
import logging

from liaison.client.cli_common import home_path, log_level
from liaison.client.passphrase import passphrase
from liaison.keys.keystore import KEY_STORE_FOLDER, NodeKeys
from liaison.keys.sealed import Unlocker


def cmd_serve(args: argparse.Namespace) -> int:
    # No cyclic collection while the server loads: the node's start-up objects live as
    # long as it does, and the node freezes them and turns the collector back on once
    # it serves (liaison.server.node.serve).
    gc.disable()
    try:
        logging.basicConfig(
            level=log_level(args, logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)
        path = home_path(args)  # before the passphrase is asked
        unlocker = Unlocker(passphrase(args.passphrase_file, what="the node's keys"))
        # scrypt (about 0.3 s at the production cost) runs on its own thread while the
        # interpreter imports the server (about as long again).
        NodeKeys(path / KEY_STORE_FOLDER).unlock_ahead(unlocker)
        import asyncio  # noqa: PLC0415 - after the derivation has started

        from liaison.server.home import NodeHome  # noqa: PLC0415
        from liaison.server.node import serve  # noqa: PLC0415

        asyncio.run(serve(NodeHome(path, unlocker)))
        return 0
    finally:  # on a failed start too (the CLI returns; the process may go on)
        gc.enable()
