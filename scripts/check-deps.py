#!/usr/bin/env python3
"""Fails when any workspace package depends on a package under services/: service crates are
leaves; what others need from them belongs in a shared crate (keel-tenancy, keel-auth, …)."""
import json
import os
import subprocess
import sys

meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
root = meta["workspace_root"]
services = {
    p["name"]
    for p in meta["packages"]
    if os.path.relpath(p["manifest_path"], root).startswith("services" + os.sep)
}
bad = [
    (p["name"], d["name"], d.get("kind") or "normal")
    for p in meta["packages"]
    for d in p["dependencies"]
    if d["name"] in services and d["name"] != p["name"]
]
for package, dep, kind in bad:
    print(f"{package} depends on the service crate {dep} ({kind}); move what it needs into a shared crate")
if bad:
    sys.exit(1)
print(f"check-deps: no package depends on a service crate ({len(services)} services, {len(meta['packages'])} packages)")
