"""Entities at once (issue 16): one initial sync through 1, 2 and 4 streams, over loopback
and through a proxy that delays every answer by 100 ms, as ratios to 1 stream in the
same round.

A server org of `--records` (account, contact, lead, appointment, with lookups) on a
portal (gunicorn); the `resco` backend; pages of `--page` records. Rounds interleave the
stream counts (the machine is shared); the best of the rounds is compared.
Run: .venv/bin/python bench/streams.py [--records N] [--page N] [--rounds N]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.delay_proxy import DelayProxy  # noqa: E402
from bench.sync import DELAY_S, EMAIL, ENTITIES, PASSWORD, seed  # noqa: E402
from portal import create_app  # noqa: E402
from portal.backends.resco import RescoBackend  # noqa: E402
from portal.db import get_db  # noqa: E402
from portal.orgs import registry, store, transactions  # noqa: E402
from portal.sync import engine, metadata  # noqa: E402
from portal.sync.connections import EntitySettings  # noqa: E402
from tests.portal_process import PortalProcess  # noqa: E402

STREAMS = (1, 2, 4)


def initial_sync(folder: Path, root: str, streams: int, page_size: int) -> tuple[float, int]:
    """(seconds, records) of a first download of ENTITIES into a new client org."""
    folder.mkdir(parents=True, exist_ok=True)
    org = store.open_org(folder, "cli", create=True)
    backend = RescoBackend(root, EMAIL, PASSWORD, allow_private=True)
    metadata.update_client_metadata(org, backend.read_metadata(), set())
    transactions.set_client(org, True)
    plan = engine.Plan([EntitySettings(e, True, True, None) for e in ENTITIES],
                       page_size=page_size, streams=streams)
    run = engine.Run(org, backend, plan)
    start = time.perf_counter()
    engine.download(run)
    seconds = time.perf_counter() - start
    backend.close()
    org.close()
    return seconds, run.result.total("downloaded")


def main() -> None:
    """Print one line per stream count and network: best seconds and ratio to 1 stream."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bst", dir="/tmp") as folder:
        tmp = Path(folder)
        app = create_app({"INSTANCE_PATH": tmp / "a"})
        orgs = store.orgs_path(app)
        with app.app_context():
            registry.create_org(get_db(), orgs, "big", email=EMAIL, password=PASSWORD,
                                template="sales")
        with store.open_org(orgs, "big") as org:
            seed(org, args.records)
        portal = PortalProcess(tmp / "a", "unix://" + str(tmp / "none.sock"))
        proxy = DelayProxy(portal.url, DELAY_S)
        try:
            times: dict[tuple[str, int], list[float]] = {}
            for n in range(args.rounds):
                for net, base in (("loopback", portal.url), ("100 ms", proxy.url)):
                    for streams in STREAMS:
                        seconds, downloaded = initial_sync(
                            tmp / f"c-{net[:3]}-{streams}-{n}", base + "/odata/v4/big/",
                            streams, args.page)
                        assert downloaded == args.records, downloaded
                        times.setdefault((net, streams), []).append(seconds)
        finally:
            proxy.stop()
            portal.stop()
    for net in ("loopback", "100 ms"):
        one = min(times[(net, 1)])
        for streams in STREAMS:
            best = min(times[(net, streams)])
            print(f"streams {streams} {net}: {args.records / best:,.0f} records/s (best of "
                  f"{', '.join(f'{t:.2f}' for t in times[(net, streams)])} s), "
                  f"{one / best:.2f} x 1 stream")


if __name__ == "__main__":
    main()
