"""Download the test fixtures (public data, never shipped in the repository) into a cache folder.

    python scripts/fetch_test_data.py                      # -> ~/.cache/dcsam/test-data/data
    export DCSAM_TEST_DATA=~/.cache/dcsam/test-data/data   # what the tests and the scripts read

The folder it makes has the layout the tests expect (the same as a developer's ``../shared/data``):

* ``perseg-mini/``: 3 PerSeg objects x 3 images + masks, from the PerSAM reference repository's
  ``examples/`` (MIT; images from the DreamBooth dataset), with that repository's licence file;
* ``fss-mini/``: FSS-1000 ``apple`` and ``basketball``, 10 images + masks each, from the examples of Intel's
  Geti Instant Learn (Apache-2.0; FSS-1000 is for research use);
* ``davis16-dev/``: 10 DAVIS-2016 val sequences at 480p (``JPEGImages/<seq>/%05d.jpg``,
  ``Annotations/<seq>/%05d.png``), extracted from the official DAVIS-2016 archive (CC BY-NC 4.0: evaluation
  only). Only the needed members are extracted; the archive stays in the cache (``--delete-archives``).

Every file is checked by SHA-256 (a DAVIS sequence by the SHA-256 of its files' sorted "path sha256" lines);
a file that does not match is not kept, and the run fails naming it. A second run checks and downloads nothing.

Options: ``--cache DIR`` (downloads, default ``$XDG_CACHE_HOME/dcsam/test-data``), ``--dest DIR`` (the data
folder, default ``<cache>/data``), ``--base-url URL`` (a mirror: every source URL's scheme and host are
replaced by URL, its path kept), ``--only NAME`` (one source), ``--check DIR`` (verify a folder, no download),
``--manifest FILE`` (another list of sources, JSON, same shape as ``MANIFEST``: for tests and mirrors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

MANIFEST: dict = {
    "sources": [
        {
            "name": "perseg-mini",
            "kind": "files",
            "url": "https://raw.githubusercontent.com/ZrrSkywalker/Personalize-SAM/main/",
            "files": {
                "perseg-mini/LICENSE.txt": [
                    "LICENSE.txt",
                    "b3445d3671f38cdcc370bed620c473bd18aa4016d0ca11d167717869ee82e488",
                ],
                "perseg-mini/cat_00.jpg": [
                    "examples/cat_00.jpg",
                    "811beba5bfffc66533e097b9b8aa2fad3b78f410334a258ba0d2c8de900c9af7",
                ],
                "perseg-mini/cat_00.png": [
                    "examples/cat_00.png",
                    "887724a734dc5da50d4f4c84b533642965869309184c6a98790f0fc61b0c73a5",
                ],
                "perseg-mini/cat_01.jpg": [
                    "examples/cat_01.jpg",
                    "b4b39821f8562d268f28d3bc06f48f72c42e8cdde89414e6764dae743b31eac0",
                ],
                "perseg-mini/cat_01.png": [
                    "examples/cat_01.png",
                    "9494a27914b2153dac000e4944b692157b3f497efe7f378871c2954ed25db5e3",
                ],
                "perseg-mini/cat_02.jpg": [
                    "examples/cat_02.jpg",
                    "b3c2334ffe5ab739658c8b35a28578fbdaf63fb8c6217dac69c49c0a9e9efd9c",
                ],
                "perseg-mini/cat_02.png": [
                    "examples/cat_02.png",
                    "17cfcc33d6546538dd0c59bec0221f04e959451dfc6942cbcbc53426357a98b4",
                ],
                "perseg-mini/colorful_sneaker_00.jpg": [
                    "examples/colorful_sneaker_00.jpg",
                    "cb6d41f34438e2492ebc1314243ae1ebb046213c18803cff9adb00ae922f064a",
                ],
                "perseg-mini/colorful_sneaker_00.png": [
                    "examples/colorful_sneaker_00.png",
                    "21d3ca3f8c0532381882ee849b1c2bedbe1588cccc774dce1d4328e3f4514b60",
                ],
                "perseg-mini/colorful_sneaker_01.jpg": [
                    "examples/colorful_sneaker_01.jpg",
                    "4a6b167131472609ac531a80ed389f4072f7e393ab6faafb7b967df4f04dd917",
                ],
                "perseg-mini/colorful_sneaker_01.png": [
                    "examples/colorful_sneaker_01.png",
                    "f4ce361a39befead6d147161775ac214e4ff1785d48523f87370c4455fd1da1a",
                ],
                "perseg-mini/colorful_sneaker_02.jpg": [
                    "examples/colorful_sneaker_02.jpg",
                    "c735febd2eb153d1c665c38121c1a9dfdf5eef8d9dca1ae77b38009fac7f0180",
                ],
                "perseg-mini/colorful_sneaker_02.png": [
                    "examples/colorful_sneaker_02.png",
                    "39137da77b01d122b8e33051d316c13a9ada546ec8a92240f4efe7f6566bf0c3",
                ],
                "perseg-mini/duck_toy_00.jpg": [
                    "examples/duck_toy_00.jpg",
                    "f461a9eafea0870bf392943ba1d3c364f75e544e4d9df7fe559e6d8c541cbae5",
                ],
                "perseg-mini/duck_toy_00.png": [
                    "examples/duck_toy_00.png",
                    "f2bc4a6ed435fb5122bc5679f12742a2d889e27770075d08db42aa6e8c86c7b5",
                ],
                "perseg-mini/duck_toy_01.jpg": [
                    "examples/duck_toy_01.jpg",
                    "028d9cef79640084382f3c6a62a103095f1b33f017f80dca183a841d199e1bea",
                ],
                "perseg-mini/duck_toy_01.png": [
                    "examples/duck_toy_01.png",
                    "0f449ada4507513d3503767cb96f5de5add1b37634d6cd6992ee68ee7b68abf8",
                ],
                "perseg-mini/duck_toy_02.jpg": [
                    "examples/duck_toy_02.jpg",
                    "ccbdf9d67fc925196426cff9c1f9e02f6e1da968060032024585ee7cdd636138",
                ],
                "perseg-mini/duck_toy_02.png": [
                    "examples/duck_toy_02.png",
                    "3137e764e418c9f6a76bb3aba22bc8a16a881d7b099928ff8a835727d8680b29",
                ],
            },
        },
        {
            "name": "fss-mini",
            "kind": "files",
            "url": "https://raw.githubusercontent.com/open-edge-platform/geti-instant-learn/main/library/examples/assets/fss-1000/",
            "files": {
                "fss-mini/images/apple/1.jpg": [
                    "images/apple/1.jpg",
                    "a908b19937a6bf15a437840296e0cf45ea1d7061f9cb831752861f89005934de",
                ],
                "fss-mini/images/apple/10.jpg": [
                    "images/apple/10.jpg",
                    "980f1cc9642b462f24b475b2d464d6036b8081dd959c0642d59072a47f65aadb",
                ],
                "fss-mini/images/apple/2.jpg": [
                    "images/apple/2.jpg",
                    "44bbe9c06809d196570eecc599a9eb0fc3a4e450a035a422fe6878a562bf2eff",
                ],
                "fss-mini/images/apple/3.jpg": [
                    "images/apple/3.jpg",
                    "ceda9f0de03f8a2e7326ad7ad643fd173f55aed630a284e66e889d92df17c30a",
                ],
                "fss-mini/images/apple/4.jpg": [
                    "images/apple/4.jpg",
                    "4938a5c74c72cfb8fce3055058fb4084c2a3c166bfb4d0d0d1779c755840f668",
                ],
                "fss-mini/images/apple/5.jpg": [
                    "images/apple/5.jpg",
                    "98ed6c4893c2d191ee1c6986857b8d36821d57dfd09a0d9db45a4ddfbdc85237",
                ],
                "fss-mini/images/apple/6.jpg": [
                    "images/apple/6.jpg",
                    "33494af404d9750365bfb7648ab2fed85aca05490985b05703b494cfac6e58bc",
                ],
                "fss-mini/images/apple/7.jpg": [
                    "images/apple/7.jpg",
                    "c197854b4d9cd912ea4e0aba45ad4d356eda3d19dd119357a2f7eb27178a93b5",
                ],
                "fss-mini/images/apple/8.jpg": [
                    "images/apple/8.jpg",
                    "bcb9338bb8833196bd4c5db669584e31d299797acbcf786ac5ad5d6c4862073f",
                ],
                "fss-mini/images/apple/9.jpg": [
                    "images/apple/9.jpg",
                    "a5dddafe4addbf5b06dda0aeeb0c2f569087cc6873a8c75070b20c07bb14128e",
                ],
                "fss-mini/images/basketball/1.jpg": [
                    "images/basketball/1.jpg",
                    "7bbc4794e52f5518d79e7ab004a46f1a98b48ca10b0ac48cf48e10a23ec8f77f",
                ],
                "fss-mini/images/basketball/10.jpg": [
                    "images/basketball/10.jpg",
                    "d7bf8ee0a7b2b310b3ac7805b95ef1d04414db3d3f810ee784588edac77686ca",
                ],
                "fss-mini/images/basketball/2.jpg": [
                    "images/basketball/2.jpg",
                    "3245a21e78c982d8a225b440af12d394c1a72c738531c99957abfb973419b8e4",
                ],
                "fss-mini/images/basketball/3.jpg": [
                    "images/basketball/3.jpg",
                    "3e15f5a6cede888947152aa0a44c5157a2fd84c68023410c5472dca03ef31679",
                ],
                "fss-mini/images/basketball/4.jpg": [
                    "images/basketball/4.jpg",
                    "916d22a5ec167e4d86de3ecf6769e70a3b826d367cc9123d44e82e520da9c757",
                ],
                "fss-mini/images/basketball/5.jpg": [
                    "images/basketball/5.jpg",
                    "6d952f63f8b21e3aeffaa846ded0be09a6d1c1e11119fcb4f4ef3ccaae7688ea",
                ],
                "fss-mini/images/basketball/6.jpg": [
                    "images/basketball/6.jpg",
                    "8c34c08d6b5f74bd57e4e44b344de4e925e7091d40b87149a5ca3e59cbfe0651",
                ],
                "fss-mini/images/basketball/7.jpg": [
                    "images/basketball/7.jpg",
                    "39a32b581dffca905ceda9cd753b83e190df251d3b2a68acb27522cf0165aa37",
                ],
                "fss-mini/images/basketball/8.jpg": [
                    "images/basketball/8.jpg",
                    "2dc4d877bd22dd823f22e763045d51dc324a1f3df7960f6310e58816de4333a3",
                ],
                "fss-mini/images/basketball/9.jpg": [
                    "images/basketball/9.jpg",
                    "336a39ffbba5ddb2c8e88d45eb377336f1ada98005f79f338bf33c99537b8c74",
                ],
                "fss-mini/masks/apple/1.png": [
                    "masks/apple/1.png",
                    "67afe6eda3af58e69d552aa8466d75daf3f5a8191956009964f8e764a2534a82",
                ],
                "fss-mini/masks/apple/10.png": [
                    "masks/apple/10.png",
                    "ed65cae4fe224ba44900a9b39f1b136b020f29050032611b60fb8ba452043df5",
                ],
                "fss-mini/masks/apple/2.png": [
                    "masks/apple/2.png",
                    "917e19c83fb20f3e30abaa099a8e641b92783904c996b19f412bce166de9134c",
                ],
                "fss-mini/masks/apple/3.png": [
                    "masks/apple/3.png",
                    "61e336e3900f33030a2b6701407debe4c5fa14dd66f66fb67400b081c944893f",
                ],
                "fss-mini/masks/apple/4.png": [
                    "masks/apple/4.png",
                    "22749baa808c309de75d07e567280fd73aef891169b2cc92dc744c6b6673a11c",
                ],
                "fss-mini/masks/apple/5.png": [
                    "masks/apple/5.png",
                    "23460c7f8dc93e1f8042b16e228722cfe998e6e235b8fd11ac4965df65aa3ac6",
                ],
                "fss-mini/masks/apple/6.png": [
                    "masks/apple/6.png",
                    "171a4a65f79b7b04660476676ace9fe5733e961c0834cd2a26fab8cd4f4c3d79",
                ],
                "fss-mini/masks/apple/7.png": [
                    "masks/apple/7.png",
                    "2e73f1f2f4c94742bcc598848a177455ad6bc9d75d86675b71a4a24b99c3a6e5",
                ],
                "fss-mini/masks/apple/8.png": [
                    "masks/apple/8.png",
                    "ce5899696b4cb5f5717c5c4c4a69ec404cb372c5c9b3c662de0c1ba5dc0bf04c",
                ],
                "fss-mini/masks/apple/9.png": [
                    "masks/apple/9.png",
                    "4b845430bdbb88ead0533c9d7c191c6deee675036390bebe7d162d7752cdc14b",
                ],
                "fss-mini/masks/basketball/1.png": [
                    "masks/basketball/1.png",
                    "7fdfbc78346c221c8fa62e934f68cef45b9cb34d6a5429b74da97aab8d9d701c",
                ],
                "fss-mini/masks/basketball/10.png": [
                    "masks/basketball/10.png",
                    "cd6bbd2032605c5fc4800aeeb48bccb173475783354721cba75a3be1e0951385",
                ],
                "fss-mini/masks/basketball/2.png": [
                    "masks/basketball/2.png",
                    "503f5038fc017e4643972eba52faf8c7f0cfb3231ee0532b8929ef6f2e41620f",
                ],
                "fss-mini/masks/basketball/3.png": [
                    "masks/basketball/3.png",
                    "ae53a826752335e7e04819961132de70476c72fb7252fd89a33c658fb2b727c1",
                ],
                "fss-mini/masks/basketball/4.png": [
                    "masks/basketball/4.png",
                    "534096bce6cc6f84fc38deef237097c44701a664ce80dc5604e1359a41f56542",
                ],
                "fss-mini/masks/basketball/5.png": [
                    "masks/basketball/5.png",
                    "dd6db797cf525c31ab8299327ac3b0399bf763ead707d45e20f9066a0def2b2d",
                ],
                "fss-mini/masks/basketball/6.png": [
                    "masks/basketball/6.png",
                    "ba48e5e765fde20987adab76a6b10ddc0a2399468554990318a00bb9babeb517",
                ],
                "fss-mini/masks/basketball/7.png": [
                    "masks/basketball/7.png",
                    "f99c0a90a5c7e5ad3129fbe4ded1534f28e99cbd8868bb6846b82ba85fdb630f",
                ],
                "fss-mini/masks/basketball/8.png": [
                    "masks/basketball/8.png",
                    "05b6036289bdaf53ca79251f355c65e37efad94ea74c69761d317f41b460a898",
                ],
                "fss-mini/masks/basketball/9.png": [
                    "masks/basketball/9.png",
                    "30a43f1162590ee029ffeccd94145868e7e977f27e459e1110f3243230ebf737",
                ],
            },
        },
        {
            "name": "davis16-dev",
            "kind": "zip",
            "url": "https://graphics.ethz.ch/Downloads/Data/Davis/DAVIS-data.zip",
            "dest": "davis16-dev",
            # archive member prefix -> folder under dest; the next path part is the group (the sequence)
            "prefixes": {"DAVIS/JPEGImages/480p/": "JPEGImages/", "DAVIS/Annotations/480p/": "Annotations/"},
            # group -> [number of files, SHA-256 of the sorted "<path under dest> <sha256>\n" lines]
            "groups": {
                "blackswan": [100, "1b9cd367aa0b34bdbd731af1e883229c0893c9ddbaa58c0a4f6d44c6c2eaa2fb"],
                "bmx-trees": [160, "8978d60723c0ad3f73d2121c479cb541df7efcca4ad400b38a1e0598c18fbcdc"],
                "breakdance": [168, "27cf4b34cf2b4bee1aaf80ec8be66db2a4a06cf36d1da51ad3158ae0ec63953e"],
                "car-roundabout": [150, "6999447c46f57301ab459d8f27c88e2985df11267a4ef7acc0b8e4691732df28"],
                "car-shadow": [80, "6c47229754d82568fab6e165aa3cc640ac181154ba53dfa79b738abc9ff09acf"],
                "dog": [120, "72bef0c08d1b4d736f98c0200bdb6a2934e116680d7898fd993a042d8bdac60e"],
                "horsejump-high": [100, "4db1b3e59cb316ebd170682c3027629c3ae8fa1a37b2b0c8a3e245719d301d69"],
                "kite-surf": [100, "8f7bfaff236c021a183fdc445269d9e5553d303704bec48bff7bfbc5db29eb21"],
                "libby": [98, "9183bbe73fe991196f9a94d40da50396b3f52572faa2dd3efc6990e4efd66706"],
                "paragliding-launch": [160, "52e14358aec3836a9331b06106e8eba4778cac069efa286fdfb8f624a3f878b7"],
            },
        },
    ]
}


class FetchError(Exception):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def group_digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def mirror(url: str, base_url: str | None) -> str:
    """``url`` with its scheme and host replaced by ``base_url`` (the path is kept)."""
    if not base_url:
        return url
    path = urllib.parse.urlsplit(url).path
    return base_url.rstrip("/") + path


def download(url: str, dest: Path) -> None:
    """``url`` into ``dest`` through a temporary file (nothing half-written is left)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(tmp, dest)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise FetchError(f"cannot download {url}: {exc}") from exc
        raise


def fetch_files(source: dict, dest: Path, base_url: str | None, check_only: bool) -> list[str]:
    problems = []
    for rel, (remote, expected) in source["files"].items():
        target = dest / rel
        if target.is_file() and sha256_file(target) == expected:
            continue
        if check_only:
            problems.append(f"{rel}: " + ("sha256 mismatch" if target.exists() else "missing"))
            continue
        url = mirror(urllib.parse.urljoin(source["url"], remote), base_url)
        tmp = target.with_name(f".{target.name}.download")
        download(url, tmp)
        got = sha256_file(tmp)
        if got != expected:
            tmp.unlink()
            problems.append(f"{rel}: sha256 {got} from {url}, expected {expected}")
            continue
        os.replace(tmp, target)
    return problems


def _group_state(root: Path, groups: dict) -> dict[str, bool]:
    """{group: whether its files under root are all there and match}."""
    state = {}
    for group, (count, expected) in groups.items():
        files = sorted(p for p in root.glob(f"*/{group}/*") if p.is_file())
        lines = [f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n" for p in files]
        state[group] = len(files) == count and group_digest(lines) == expected
    return state


def fetch_zip(
    source: dict, dest: Path, cache: Path, base_url: str | None, check_only: bool, delete_archive: bool
) -> list[str]:
    root = dest / source["dest"]
    groups = source["groups"]
    state = _group_state(root, groups)
    missing = [g for g, ok in state.items() if not ok]
    if not missing:
        return []
    if check_only:
        return [f"{source['dest']}/*/{g}: missing or sha256 mismatch" for g in missing]
    url = mirror(source["url"], base_url)
    archive = cache / "downloads" / Path(urllib.parse.urlsplit(source["url"]).path).name
    if not archive.is_file():
        print(f"downloading {url} (kept in {archive})", flush=True)
        download(url, archive)
    lines: dict[str, list[str]] = {g: [] for g in missing}
    written: dict[str, list[Path]] = {g: [] for g in missing}
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            for prefix, folder in source["prefixes"].items():
                if not info.filename.startswith(prefix):
                    continue
                rest = info.filename[len(prefix) :]
                group = rest.split("/", 1)[0]
                if group not in lines or "/" not in rest or ".." in rest.split("/"):
                    break
                rel = folder + rest
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                lines[group].append(f"{rel} {sha256_file(target)}\n")
                written[group].append(target)
                break
    problems = []
    for group in missing:
        count, expected = groups[group]
        got = group_digest(lines[group])
        if len(lines[group]) != count or got != expected:
            for p in written[group]:
                p.unlink()
            problems.append(
                f"{source['dest']}/*/{group}: {len(lines[group])} files with digest {got} from {url}, "
                f"expected {count} with {expected}"
            )
    if delete_archive and not problems:
        archive.unlink()
    return problems


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcsam" / "test-data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="downloads (default $XDG_CACHE_HOME/dcsam/test-data)")
    ap.add_argument("--dest", type=Path, default=None, help="the data folder (default <cache>/data)")
    ap.add_argument("--base-url", default=None, help="a mirror that serves the sources' URL paths")
    ap.add_argument("--only", action="append", default=None, help="only this source (repeatable)")
    ap.add_argument("--check", type=Path, default=None, metavar="DIR", help="verify DIR, download nothing")
    ap.add_argument("--manifest", type=Path, default=None, help="sources as JSON instead of the built-in ones")
    ap.add_argument("--delete-archives", action="store_true", help="remove an archive once extracted")
    args = ap.parse_args(argv)

    manifest = json.loads(args.manifest.read_text()) if args.manifest else MANIFEST
    cache = (args.cache or default_cache()).expanduser().resolve()
    check_only = args.check is not None
    dest = (args.check if check_only else (args.dest or cache / "data")).expanduser().resolve()
    sources = [s for s in manifest["sources"] if not args.only or s["name"] in args.only]
    if args.only and len(sources) != len(set(args.only)):
        known = [s["name"] for s in manifest["sources"]]
        print(f"fetch_test_data: unknown source in {args.only}; known: {known}", file=sys.stderr)
        return 2
    failed = False
    for source in sources:
        try:
            if source["kind"] == "files":
                problems = fetch_files(source, dest, args.base_url, check_only)
            elif source["kind"] == "zip":
                problems = fetch_zip(source, dest, cache, args.base_url, check_only, args.delete_archives)
            else:
                problems = [f"unknown kind {source['kind']!r}"]
        except (FetchError, zipfile.BadZipFile) as exc:
            problems = [str(exc)]
        for problem in problems:
            print(f"fetch_test_data: {source['name']}: {problem}", file=sys.stderr)
        failed |= bool(problems)
        print(f"{source['name']}: {'FAILED' if problems else 'ok'}", flush=True)
    if failed:
        print("fetch_test_data: FAILED (files that did not verify were not kept)", file=sys.stderr)
        return 1
    if not check_only:
        print(f"DCSAM_TEST_DATA={dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
