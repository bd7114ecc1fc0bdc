"""Open org files, kept per thread between requests.

Opening an org file runs its migration check and reloads its metadata; a
client paging through 100 pages would pay that 100 times. Each thread keeps
its own few connections (a connection is never shared between threads), and
checks the file's identity on every use, so a deleted or re-created org is
never served from a stale connection.
"""

import os
import threading
from collections import OrderedDict
from pathlib import Path

from portal.orgs.store import OrgDb, open_org, org_file

PER_THREAD = 8
_local = threading.local()


def org_connection(orgs_dir: str | Path, name: str) -> OrgDb:
    """This thread's open OrgDb of an org (NotFound when its file does not exist)."""
    cache: OrderedDict[str, tuple[tuple[int, int], OrgDb]] | None = getattr(_local, "orgs", None)
    if cache is None:
        cache = _local.orgs = OrderedDict()
    path = str(org_file(orgs_dir, name))
    try:
        stat = os.stat(path)
        identity = (stat.st_dev, stat.st_ino)
    except FileNotFoundError:
        identity = (-1, -1)
    found = cache.get(path)
    if found is not None:
        if found[0] == identity:
            cache.move_to_end(path)
            return found[1]
        del cache[path]
        found[1].close()
    org = open_org(orgs_dir, name)
    cache[path] = (identity, org)
    while len(cache) > PER_THREAD:
        _, (_, oldest) = cache.popitem(last=False)
        oldest.close()
    return org
