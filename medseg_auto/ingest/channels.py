"""Channel names: derived from file names, matched across cases, ordered by the user's flags.

A case's image files differ in one part of their name (``Flair_x`` / ``T1c_x``, ``case_t1ce`` /
``case_flair``, ``case_0000`` / ``case_0001``); that part, the *channel key*, names the channel.
"""
from __future__ import annotations

import re

# Well-known sequence names, written as our users read them. Keys are lower case without separators.
_CANONICAL = {
    "flair": "FLAIR", "t2flair": "FLAIR",
    "t1": "T1", "t1w": "T1", "t1n": "T1", "t1native": "T1",
    "t1c": "T1c", "t1ce": "T1c", "t1gd": "T1c", "t1post": "T1c", "t1contrast": "T1c",
    "t2": "T2", "t2w": "T2",
    "ct": "CT", "pet": "PET", "adc": "ADC", "dwi": "DWI", "pd": "PD",
}
_SEPARATORS = "_-. "


def canonical_name(key: str) -> str:
    """The display name of a channel key: ``flair`` -> ``FLAIR``, ``t1ce`` -> ``T1c``; others unchanged."""
    return _CANONICAL.get(re.sub(r"[_\-. ]", "", key.lower()), key)


def same_channel(a: str, b: str) -> bool:
    """Whether two channel names mean the same channel (case and alias insensitive; ``0000`` == ``0``)."""
    if a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return canonical_name(a).lower() == canonical_name(b).lower()


def channel_keys(stems: list[str], case_name: str) -> list[str]:
    """The part of each file stem that tells a case's channels apart.

    The case name is removed, then the prefix and suffix that all stems share (cut at separators).
    A single file has the key ``""``.
    """
    if len(stems) == 1:
        return [""]
    parts = [_remove_case_name(s, case_name) for s in stems]
    prefix = common_affix(parts, reverse=False)
    suffix = common_affix(parts, reverse=True)
    keys = [p[len(prefix): len(p) - len(suffix)].strip(_SEPARATORS) for p in parts]
    return [k or p.strip(_SEPARATORS) for k, p in zip(keys, parts)]


def _remove_case_name(stem: str, case_name: str) -> str:
    """The stem without the case name where it stands as a whole token (case ``a`` leaves ``Flair`` whole)."""
    if not case_name:
        return stem
    found = re.search(rf"(?<![A-Za-z0-9]){re.escape(case_name)}(?![A-Za-z0-9])", stem, re.IGNORECASE)
    if found is None:
        return stem
    return (stem[:found.start()] + "_" + stem[found.end():]).strip(_SEPARATORS)


def common_affix(strings: list[str], reverse: bool) -> str:
    """The longest prefix (or suffix) shared by all strings that ends (starts) at a separator."""
    seqs = [s[::-1] if reverse else s for s in strings]
    common = seqs[0]
    for s in seqs[1:]:
        n = 0
        while n < min(len(common), len(s)) and common[n] == s[n]:
            n += 1
        common = common[:n]
    cut = max((i + 1 for i, ch in enumerate(common) if ch in _SEPARATORS), default=0)
    common = common[:cut]
    return common[::-1] if reverse else common


def resolve_channels(keys: list[str], wanted: list[str] | None, image_type: list[str],
                     declared: dict | None = None) -> tuple[list[str], list[str]]:
    """Order the dataset's channel keys and name them for nnU-Net's ``channel_names``.

    ``wanted`` is ``--channels`` (selects and orders by name); ``image_type`` is ``-i`` split at commas:
    one type (``MRI``, ``CT``) or one name per channel. ``declared`` is an nnU-Net dataset.json's
    ``channel_names`` by position. The names matter: nnU-Net picks its normalisation from them (``CT`` -> CT scheme).
    Raises :class:`InputError` naming what was found when the flags do not fit the files.
    """
    from medseg_auto.errors import InputError

    found = ", ".join(canonical_name(k) or "image" for k in keys)
    if wanted:
        ordered = []
        for w in wanted:
            match = [k for k in keys if same_channel(k, w)]
            if not match:
                raise InputError(f"--channels: no channel '{w}' in the files; channels found: {found or 'none'}")
            ordered.append(match[0])
        keys = ordered
    if not keys:  # no case was found: discovery's problems say why, -i cannot be checked against nothing
        return [], []
    named = all(k and not k.isdigit() for k in keys)
    if len(image_type) > 1:
        if len(image_type) != len(keys):
            raise InputError(f"-i names {len(image_type)} channels ({', '.join(image_type)}) but the cases have "
                             f"{len(keys)} ({found}). Give one name per channel, or -i MRI / -i CT.")
        if named and not wanted:
            order = []
            for name in image_type:
                match = [k for k in keys if same_channel(k, name)]
                if not match:
                    raise InputError(f"-i names channel '{name}' but the files hold {found}. Use those names "
                                     f"(-i {','.join(canonical_name(k) for k in keys)}) or map them by order "
                                     f"with --channels {','.join(canonical_name(k) for k in keys)}.")
                order.append(match[0])
            keys = order
        return keys, list(image_type)
    kind = image_type[0] if image_type else "MRI"
    if declared and not wanted and all(k.isdigit() for k in keys):
        return keys, [str(declared.get(int(k), kind)) for k in keys]
    if kind.upper() == "CT":
        return keys, ["CT"] * len(keys)
    if len(keys) == 1:
        return keys, [canonical_name(keys[0]) if named else kind]
    return keys, [canonical_name(k) if named else f"{kind}_{i}" for i, k in enumerate(keys)]
