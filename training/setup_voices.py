"""Install the Debian voices and tools the data code uses (stdlib only: runs before the venv exists).

    python3 training/setup_voices.py            # training voices: espeak-ng, sox, MBROLA, Pico, mp3 codec
    python3 training/setup_voices.py --eval     # + the evaluation-only voices (flite, festival + voices)

The MBROLA voices and SVOX Pico are in Debian's contrib / non-free components, which a default
Debian sources list lacks: when they are missing this adds
``/etc/apt/sources.list.d/mambaserve-contrib-non-free.sources`` (same mirror and suites as the
existing Debian entry, ``Components: contrib non-free``) and says so. It also fetches the English
package-description translations (``apt-get update -o Acquire::Languages=en``, kept on by
``/etc/apt/apt.conf.d/zz-mambaserve-languages``): the long descriptions are reserved evaluation
text, and training text is deduplicated against them.
Needs root or sudo; does nothing when everything is there.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MBROLA_DBS = (
    "us1",
    "us2",
    "us3",
    "en1",
    "af1",
    "de1",
    "de2",
    "de3",
    "de4",
    "de5",
    "de6",
    "fr1",
    "fr4",
    "gr2",
    "hu1",
    "nl2",
    "pl1",
    "ro1",
    "sw1",
    "sw2",
)
TRAIN_PACKAGES = (
    "espeak-ng",
    "sox",
    "libsox-fmt-mp3",
    "mbrola",
    *(f"mbrola-{d}" for d in MBROLA_DBS),
    "libttspico-utils",
    "fortunes",
    "fortunes-min",
)
EVAL_PACKAGES = ("flite", "festival", "festvox-kallpc16k", "festvox-us-slt-hts")
SOURCES = Path("/etc/apt/sources.list.d/mambaserve-contrib-non-free.sources")
# Keeps apt fetching the English descriptions on later `apt-get update`s (Debian's container images
# turn translations off in apt.conf.d/docker-no-languages; this file sorts after it).
LANGUAGES_CONF = Path("/etc/apt/apt.conf.d/zz-mambaserve-languages")


def _have(pkg: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return out.returncode == 0 and "install ok installed" in out.stdout


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo"]
    raise SystemExit("setup_voices: installing Debian packages needs root or sudo")


def _debian_mirror() -> tuple[str, str, str]:
    """(URIs, Suites, Signed-By) of the main Debian entry in the deb822 sources, else Debian defaults."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        if Path(path) == SOURCES:
            continue
        for block in Path(path).read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", block, flags=re.MULTILINE))
            uris, suites = fields.get("URIs", ""), fields.get("Suites", "")
            if "debian" in uris and "security" not in uris and "security" not in suites:
                return uris, suites, fields.get("Signed-By", "/usr/share/keyrings/debian-archive-keyring.gpg")
    codename = "bookworm"
    with contextlib.suppress(OSError, AttributeError):
        codename = re.search(r"VERSION_CODENAME=(\w+)", Path("/etc/os-release").read_text()).group(1)
    return (
        "http://deb.debian.org/debian",
        f"{codename} {codename}-updates",
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    )


def _contrib_enabled() -> bool:
    texts = [Path(p).read_text() for p in glob.glob("/etc/apt/sources.list.d/*") if Path(p).is_file()]
    if Path("/etc/apt/sources.list").is_file():
        texts.append(Path("/etc/apt/sources.list").read_text())
    return any(re.search(r"non-free(\s|$)", t) and "contrib" in t for t in texts)


def add_contrib_non_free(sudo: list[str]) -> None:
    uris, suites, signed = _debian_mirror()
    text = f"Types: deb\nURIs: {uris}\nSuites: {suites}\nComponents: contrib non-free\nSigned-By: {signed}\n"
    print(
        f"setup_voices: adding Debian contrib + non-free ({uris} {suites}) for the MBROLA and Pico voices: {SOURCES}"
    )
    subprocess.run([*sudo, "tee", str(SOURCES)], input=text, text=True, check=True, stdout=subprocess.DEVNULL)


def ensure_packages(packages: tuple[str, ...], quiet: bool = False) -> list[str]:
    """Install whichever of `packages` are missing; returns what was installed."""
    missing = [p for p in packages if not _have(p)]
    translations = glob.glob("/var/lib/apt/lists/*_i18n_Translation-en*")
    if not missing and translations and LANGUAGES_CONF.exists():
        return []
    sudo = _sudo()
    if not LANGUAGES_CONF.exists():
        print(f"setup_voices: {LANGUAGES_CONF}: apt keeps the English package descriptions (reserved text)")
        subprocess.run(
            [*sudo, "tee", str(LANGUAGES_CONF)],
            input='Acquire::Languages "en";\n',
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if missing and not _contrib_enabled():
        add_contrib_non_free(sudo)
    subprocess.run([*sudo, "apt-get", "update", "-qq", "-o", "Acquire::Languages=en"], check=True)
    if missing:
        print(f"setup_voices: apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL if quiet else None,
        )
    return missing


def ensure_voices(eval_voices: bool = False) -> list[str]:
    return ensure_packages(TRAIN_PACKAGES + (EVAL_PACKAGES if eval_voices else ()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--eval", action="store_true", help="also the evaluation-only voices (flite, festival)"
    )
    args = parser.parse_args(argv)
    installed = ensure_voices(args.eval)
    print(
        f"setup_voices: installed {' '.join(installed)}" if installed else "setup_voices: all voices present"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
