"""SQLite URLs as people write them: `sqlite:////absolute/path`, `sqlite:///relative/path`, and
`sqlite:///tmp/x.db`, which is ./tmp/x.db and is refused with both spellings where ./tmp does not
exist but /tmp does. The tools and the consumers say which file a relative URL opened."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from consumers.store import StoreError, open_store
from consumers.store.sqlite import sqlite_path
from tests.support.commands import hooks
from tests.support.env import BIN, subprocess_env
from tests.support.processes import running
from wazza_tools.dev.localbroker import free_port

# A command refuses or answers right after its imports; a loaded machine gets room.
COMMAND_SECONDS = 30.0
HINT = "write sqlite:////tmp/x.db (four slashes); for a file under this folder, create ./tmp first"


def test_absolute_and_relative_urls_name_their_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()

    assert sqlite_path("sqlite:////srv/wazza/wazza.db") == Path("/srv/wazza/wazza.db")
    assert sqlite_path("sqlite:///data/wazza.db") == Path("data/wazza.db")
    assert sqlite_path("sqlite:///./var/wazza.db") == Path("var/wazza.db")  # said plainly
    assert sqlite_path("sqlite:///wazza.db") == Path("wazza.db")
    assert sqlite_path("sqlite:///tmp/x.db") == Path("tmp/x.db")  # ./tmp exists here


def test_a_relative_url_whose_folder_exists_only_at_the_root_is_refused_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(StoreError) as refused:
        sqlite_path("sqlite:///tmp/x.db")

    assert str(refused.value) == (
        "sqlite:///tmp/x.db names ./tmp/x.db (relative: ./tmp does not exist here) while /tmp "
        f"exists: for /tmp/x.db {HINT}"
    )


async def made_store(folder: Path) -> None:
    """A migrated store at folder/var/wazza.db, as the consumers leave it."""
    (folder / "var").mkdir()
    store = await open_store(f"sqlite:///{folder}/var/wazza.db")
    await store.close()


@pytest.mark.slow
async def test_the_tools_say_which_file_a_relative_url_opened(tmp_path: Path) -> None:
    await made_store(tmp_path)

    relative = await hooks(
        "jobs", "list", "--json", cwd=tmp_path, env=subprocess_env(DATABASE_URL="sqlite:///var/wazza.db")
    )  # fmt: skip
    absolute = await hooks(
        "jobs", "list", "--json", "--database-url", f"sqlite:///{tmp_path}/var/wazza.db",
        cwd=tmp_path,
    )  # fmt: skip
    migrate = await hooks("migrate", "--database-url", "sqlite:///var/wazza.db", cwd=tmp_path)

    assert relative.code == 0, relative
    assert relative.json() == {"jobs": []}
    said = f"wazza-hooks: store sqlite:///var/wazza.db: the file {tmp_path}/var/wazza.db\n"
    assert relative.err == said
    assert (absolute.code, absolute.err) == (0, "")  # an absolute path names itself
    assert migrate.code == 0, migrate
    assert migrate.err == said


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["jobs", "show", "job_1"], id="jobs"),
        pytest.param(["migrate"], id="migrate"),
        pytest.param(["replay", "--service", "completion", "--from-beginning"], id="replay"),
    ],
)
async def test_the_tools_refuse_sqlite_tmp_in_one_line_with_the_hint(
    tmp_path: Path, argv: list[str]
) -> None:
    result = await hooks(*argv, cwd=tmp_path, env=subprocess_env(DATABASE_URL="sqlite:///tmp/x.db"))

    assert result.code == 1, result
    assert HINT in result.err
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "tmp").exists()


@pytest.mark.slow
def test_dev_refuses_such_a_store_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "wazza-hooks"), "dev", "--database-url", "sqlite:///tmp/x.db",
         "--engine", "tansu", "--port", str(free_port()), "--broker-port", str(free_port())],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
        timeout=COMMAND_SECONDS,
    )  # fmt: skip

    assert done.returncode == 2, done
    assert "wazza-hooks dev: --database-url: sqlite:///tmp/x.db names ./tmp/x.db" in done.stderr
    assert HINT in done.stderr


@pytest.mark.slow
async def test_a_consumer_says_which_file_it_opened_and_refuses_sqlite_tmp(
    tmp_path: Path,
) -> None:
    await made_store(tmp_path)
    nowhere = f"127.0.0.1:{free_port()}"  # the store is opened before the broker is reached
    argv = [str(BIN / "wazza-consumer"), "completion", "--metrics-port", "0"]

    env = subprocess_env(DATABASE_URL="sqlite:///var/wazza.db", KAFKA_BOOTSTRAP_SERVERS=nowhere)
    with running(argv, env=env, cwd=tmp_path) as consumer:
        said = f"completion: store sqlite:///var/wazza.db is the file {tmp_path}/var/wazza.db"
        await consumer.wait_for(lambda c: said in c.stdout, COMMAND_SECONDS, "the store line")
        consumer.proc.send_signal(signal.SIGTERM)
        assert await consumer.wait_exit(COMMAND_SECONDS) == 0, consumer.output()

    env = subprocess_env(DATABASE_URL="sqlite:///tmp/x.db", KAFKA_BOOTSTRAP_SERVERS=nowhere)
    with running(argv, env=env, cwd=tmp_path) as refused:
        assert await refused.wait_exit(COMMAND_SECONDS) == 1, refused.output()
        assert HINT in refused.stderr
        assert "Traceback" not in refused.output()
