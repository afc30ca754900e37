"""A config that would trade wrongly is refused before anything runs, naming the file and the
field; what loads but looks unmeant is a warning; a large file loads in linear time."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest
import yaml

from shared.config import (
    CopierSettings,
    SecretSource,
    check_credentials,
    config_warnings,
    load_config,
    load_settings,
    load_yaml,
    orphan_credentials,
    parse_config,
    signing_key_problem,
)
from shared.errors import ConfigError
from shared.signing import new_signing_key

SEED, PUBLIC_KEY = new_signing_key()
HEAD = f"master: {{id: master, exchange: paper}}\nsignals: {{public_keys: ['{PUBLIC_KEY}']}}\n"


def _config(followers: str, head: str = HEAD) -> str:
    return head + "followers:\n" + textwrap.indent(textwrap.dedent(followers).strip(), "  ") + "\n"


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml")
    return str(caught.value)


REFUSED = {
    "deviation over 100 %": (
        "- {id: a, exchange: paper, risk: {max_price_deviation_pct: '101'}}",
        "max_price_deviation_pct must be > 0 and <= 100 - at `$.followers[0].risk`",
    ),
    "daily loss over 100 %": (
        "- {id: a, exchange: paper, risk: {daily_loss_pct: '150'}}",
        "daily_loss_pct must be > 0 and <= 100 - at `$.followers[0].risk`",
    ),
    "drawdown over 100 %": (
        "- {id: a, exchange: paper}\n- {id: b, exchange: paper, risk: {max_drawdown_pct: '100.5'}}",
        "max_drawdown_pct must be > 0 and <= 100 - at `$.followers[1].risk`",
    ),
    "zero daily loss": (
        "- {id: a, exchange: paper, risk: {daily_loss_pct: '0'}}",
        "daily_loss_pct must be > 0 - at `$.followers[0].risk`",
    ),
    "allowed symbol without a slash": (
        "- {id: a, exchange: paper, risk: {allow_symbols: [BTCUSD]}}",
        "Expected a symbol like BTC/USD (BASE/QUOTE, upper case) - at `$.followers[0].risk.allow_symbols[0]`",
    ),
    "denied symbol in lower case": (
        "- {id: a, exchange: paper, risk: {deny_symbols: [BTC/USD, btc/usd]}}",
        "Expected a symbol like BTC/USD (BASE/QUOTE, upper case) - at `$.followers[0].risk.deny_symbols[1]`",
    ),
    "symbol map key without a slash": (
        "- {id: a, exchange: paper, symbols: {BTCUSD: BTC/USD}}",
        "Expected a symbol like BTC/USD (BASE/QUOTE, upper case) - at `key` in `$.followers[0].symbols`",
    ),
    "symbol map value in lower case": (
        "- {id: a, exchange: paper, symbols: {BTC/USD: xbt/usd}}",
        "Expected a symbol like BTC/USD (BASE/QUOTE, upper case) - at `$.followers[0].symbols[...]`",
    ),
    "symbol both allowed and denied": (
        "- {id: a, exchange: paper, risk: {allow_symbols: [BTC/USD, ETH/USD], deny_symbols: [ETH/USD]}}",
        "ETH/USD in both allow_symbols and deny_symbols - at `$.followers[0].risk`",
    ),
    "multiplier with equity_ratio": (
        "- {id: a, exchange: paper, sizing: {mode: equity_ratio, multiplier: '2'}}",
        "`multiplier` does not apply to sizing mode equity_ratio - at `$.followers[0].sizing`",
    ),
    "fixed_notional with multiplier": (
        "- {id: a, exchange: paper, sizing: {mode: multiplier, multiplier: '2', fixed_notional: '25'}}",
        "`fixed_notional` does not apply to sizing mode multiplier - at `$.followers[0].sizing`",
    ),
    "repeated key in a follower": (
        "- id: a\n  exchange: paper\n  id: b",
        "duplicate key `id` at line 6 (first at line 4)",
    ),
    "public key not base64": (
        "- {id: a, exchange: paper}",
        "public_keys[0] is not an Ed25519 public key: expected 32 bytes in base64",
    ),
    "public key of 16 bytes": (
        "- {id: a, exchange: paper}",
        "public_keys[1] is not an Ed25519 public key: expected 32 bytes in base64",
    ),
    "follower with the master's id": (
        "- {id: a, exchange: paper}\n- {id: master, exchange: paper}",
        "followers[1].id `master` is a master's id",
    ),
    "cap below min_notional": (
        "- {id: a, exchange: paper, sizing: {max_order_notional: '0.50'}}",
        "followers[0].sizing.max_order_notional 0.50 is below min_notional 1.00",
    ),
    "repeated follower id": (
        "- {id: a, exchange: paper}\n- {id: b, exchange: paper}\n- {id: a, exchange: kraken}",
        "follower ids must be unique, repeated: a",
    ),
}
HEADS = {
    "public key not base64": "master: {id: master, exchange: paper}\nsignals: {public_keys: [not-a-key]}\n",
    "public key of 16 bytes": (
        f"master: {{id: master, exchange: paper}}\nsignals: {{public_keys: "
        f"['{PUBLIC_KEY}', '{base64.b64encode(bytes(16)).decode()}']}}\n"
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_invalid_config_is_refused_naming_the_field(case: str) -> None:
    followers, expected = REFUSED[case]

    message = _error(_config(followers, HEADS.get(case, HEAD)))

    assert message.startswith("config.yaml: "), message
    assert expected in message, message
    assert "\n" not in message


def test_repeated_top_level_key_is_refused_naming_its_lines() -> None:
    text = _config("- {id: a, exchange: paper}") + "master: {id: other, exchange: paper}\n"

    message = _error(text)

    assert message == "config.yaml: duplicate key `master` at line 5 (first at line 1)"


def test_repeated_key_beside_anchors_is_refused() -> None:
    text = _config("""
        - id: a
          exchange: paper
          risk: &careful {daily_loss_pct: '5'}
        - id: b
          exchange: paper
          risk: *careful
          exchange: kraken
    """)

    message = _error(text)

    assert message == "config.yaml: duplicate key `exchange` at line 10 (first at line 8)"


def test_load_config_refuses_an_empty_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    messages = []

    for content in ("", "\n  \n", "# nothing here yet\n"):
        path.write_text(content)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        messages.append(str(caught.value))

    assert set(messages) == {
        f"{path}: the file is empty: expected a mapping with master, signals and followers"
    }


def test_load_config_refuses_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("- master\n- followers\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}: expected a mapping with master, signals and followers, got list \"['master', 'followers']\""
    )


def test_load_config_refuses_non_utf8_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(_config("- {id: caf\xe9, exchange: paper}").encode("latin-1"))
    offset = path.read_bytes().index(b"\xe9")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset {offset})"


def test_load_yaml_matches_safe_load_on_plain_and_anchored_data() -> None:
    documents = [
        "a: 1\nb: 1.5\nc: true\nd: ~\ne:\nf: '7'\ng: \"x\"\nh: 2001-12-14\ni: [1, '1', one]\n"
        "j: {k: [], l: {}}\nm: |\n  block\n  text\n1: int key\n? long key\n: value\n",
        "base: &b {mode: multiplier, multiplier: '2'}\nfollowers:\n- <<: *b\n  id: a\n- *b\n",
        "--- !!map\nsize: !!str 3\nlist: !!seq [0x10, 0o7, .inf, -.inf, YES, off]\n",
        "- plain\n- 'single'\n- \"double\"\n- >\n  folded\n- 12:30:00\n",
        "",
        "# only a comment\n",
    ]

    loaded = [load_yaml(text) for text in documents]

    assert loaded == [yaml.safe_load(text) for text in documents]


def test_load_yaml_refuses_a_second_document_like_safe_load() -> None:
    with pytest.raises(yaml.YAMLError, match="expected a single document"):
        load_yaml("a: 1\n---\na: 2\n")


def test_parse_config_of_200000_followers_finds_the_one_repeated_id() -> None:
    # the duplicate check used to be quadratic: this would not finish (20,000 took 13 s)
    followers = "".join(f"- id: f{i:06d}\n  exchange: paper\n" for i in range(200_000))
    text = f"{HEAD}followers:\n{followers}- {{id: f123456, exchange: kraken}}\n"

    message = _error(text)

    assert message == "config.yaml: follower ids must be unique, repeated: f123456"


def _secrets(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    for name, value in files.items():
        (folder / name).write_text(value)
    return folder


def test_orphan_credentials_are_warnings_naming_each(tmp_path: Path) -> None:
    config = parse_config(
        _config("""
        - {id: tania, exchange: kraken}
        - {id: bob, exchange: binance, credentials: BOB_MAIN}
    """)
    )
    folder = _secrets(
        tmp_path,
        {
            "KRAKEN_USER_TANIA_API_KEY": "k",
            "KRAKEN_USER_GHOST_API_KEY": "k",
            "BINANCE_USER_BOB_MAIN_API_KEY": "k",
            "README": "not a key",
        },
    )
    env = {"OKX_USER_TANIA_API_KEY": "k", "GITHUB_USER_X_API_KEY": "k", "KRAKEN_API_KEY": "k"}

    warnings = orphan_credentials(config, SecretSource(folder, env=env))

    assert warnings == [
        "credentials KRAKEN_USER_GHOST_API_KEY set but no follower in config uses them "
        "(no kraken follower with id or credentials GHOST)",
        "credentials OKX_USER_TANIA_API_KEY set but no follower in config uses them "
        "(no okx follower with id or credentials TANIA)",
    ]


def test_check_credentials_reports_missing_keys_and_orphans(tmp_path: Path) -> None:
    config = parse_config(_config("- {id: tania, exchange: kraken}"))
    folder = _secrets(
        tmp_path,
        {
            "KRAKEN_USER_GHOST_API_KEY": "k",
            "KRAKEN_USER_TANIA_API_KEY": "k",
            "KRAKEN_USER_TANIA_API_SECRET": "  \n",
        },
    )

    problems = check_credentials(config, SecretSource(folder, env={}))

    assert problems == [
        "user tania: missing credentials KRAKEN_USER_TANIA_API_SECRET",
        "credentials KRAKEN_USER_GHOST_API_KEY set but no follower in config uses them "
        "(no kraken follower with id or credentials GHOST)",
    ]


def test_signing_key_matching_no_public_key_is_refused_naming_it(tmp_path: Path) -> None:
    config = parse_config(_config("- {id: a, exchange: paper}"))
    other_seed, other_public = new_signing_key()

    problems = check_credentials(config, SecretSource(None, env={"MASTER_SIGNING_KEY": other_seed}))

    assert problems == [
        f"MASTER_SIGNING_KEY matches no key in signals.public_keys (its public key "
        f"is {other_public}): copiers would reject every signal"
    ]


def test_signing_key_problems_name_the_secret() -> None:
    config = parse_config(_config("- {id: a, exchange: paper}"))
    rotating = parse_config(
        _config(
            "- {id: a, exchange: paper}",
            head=(
                f"master: {{id: master, exchange: paper}}\n"
                f"signals: {{public_keys: ['{new_signing_key()[1]}', '{PUBLIC_KEY}']}}\n"
            ),
        )
    )

    found = {
        "matching": signing_key_problem(config, SecretSource(None, env={"MASTER_SIGNING_KEY": SEED})),
        "rotating": signing_key_problem(rotating, SecretSource(None, env={"MASTER_SIGNING_KEY": SEED})),
        "unset": signing_key_problem(config, SecretSource(None, env={})),
        "garbled": signing_key_problem(config, SecretSource(None, env={"MASTER_SIGNING_KEY": "x!"})),
    }

    assert found == {
        "matching": None,
        "rotating": None,
        "unset": None,
        "garbled": "MASTER_SIGNING_KEY: master signing key is not valid base64",
    }


def test_config_warnings_name_signal_ages_shorter_than_the_ack_wait() -> None:
    config = parse_config(
        _config(
            """
        - {id: quick, exchange: paper, risk: {max_signal_age_s: 5}}
        - {id: patient, exchange: paper, risk: {max_signal_age_s: 120}}
        - {id: default, exchange: paper}
    """,
            head=f"master: {{id: master, exchange: paper}}\n"
            f"signals: {{public_keys: ['{PUBLIC_KEY}'], max_age_s: 20}}\n",
        )
    )

    slow = load_settings(CopierSettings, env={"COPYTRADE_ACK_WAIT_S": "30"})
    warnings = config_warnings(config, slow)
    quiet = config_warnings(config, load_settings(CopierSettings, env={"COPYTRADE_ACK_WAIT_S": "4"}))

    because = (
        "is shorter than the copier's ack wait (COPYTRADE_ACK_WAIT_S=30s): "
        "a redelivered signal would always be too old"
    )
    assert warnings == [
        f"signals.max_age_s 20s {because}",
        f"followers[0].risk.max_signal_age_s (quick) 5s {because}",
    ]
    assert quiet == []
