"""Settings: defaults, parsing, validation messages, and secrets kept out of repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from aindex_assets.defs.resources import ExtractorResource
from aindex_assets.lib.extractors import DEFAULT_SPEC
from aindex_assets.settings import Settings, SettingsError

S3_ENV = {
    "AINDEX_OBJECT_STORE": "s3",
    "AINDEX_S3_ENDPOINT": "http://127.0.0.1:8333",
    "AINDEX_S3_ACCESS_KEY": "AKIDEXAMPLE",
    "AINDEX_S3_SECRET_KEY": "wJalrXUtnFEMI-very-secret",
}


def test_defaults_are_the_embedded_setup(tmp_path):
    settings = Settings.from_env({}, dotenv=None)
    assert settings.data_dir == Path("aindex_data")
    assert settings.object_store == "local"
    assert settings.objects_dir == Path("aindex_data/objects")
    assert settings.database_url == "sqlite:///aindex_data/catalog.db"
    assert settings.s3_bucket == "aindex"
    # The copy-detection descriptor, the same default for the library, CLI and Dagster.
    assert settings.extractor_spec == "sscd_distilled" == DEFAULT_SPEC
    assert ExtractorResource().spec == DEFAULT_SPEC
    moved = Settings.from_env({"AINDEX_DATA_DIR": str(tmp_path)}, dotenv=None)
    assert moved.database_url == f"sqlite:///{tmp_path}/catalog.db"


def test_packaged_photos_stand_in_only_on_the_embedded_default_or_when_allowed() -> None:
    assert Settings.from_env({}, dotenv=None).allows_packaged_photos
    postgres = {"AINDEX_DATABASE_URL": "postgresql://aindex@db/aindex"}
    assert not Settings.from_env(postgres, dotenv=None).allows_packaged_photos
    assert not Settings.from_env(S3_ENV, dotenv=None).allows_packaged_photos
    allowed = Settings.from_env({**S3_ENV, "AINDEX_PACKAGED_PHOTOS": "allow"}, dotenv=None)
    assert allowed.allows_packaged_photos
    refused = Settings.from_env({"AINDEX_PACKAGED_PHOTOS": "REFUSE"}, dotenv=None)
    assert not refused.allows_packaged_photos
    with pytest.raises(SettingsError, match="AINDEX_PACKAGED_PHOTOS='yes'"):
        Settings.from_env({"AINDEX_PACKAGED_PHOTOS": "yes"}, dotenv=None)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_urls_are_pinned_to_psycopg2(scheme):
    env = {"AINDEX_DATABASE_URL": f"{scheme}://u:pw@db:5432/aindex"}
    url = Settings.from_env(env, dotenv=None).database_url
    assert url == "postgresql+psycopg2://u:pw@db:5432/aindex"


def test_s3_settings_are_read_and_secrets_redacted():
    env = {
        **S3_ENV,
        "AINDEX_S3_BUCKET": "photos",
        "AINDEX_S3_REGION": "eu-west-1",
        "AINDEX_DATABASE_URL": "postgresql://aindex:db-password@db/aindex",
    }
    settings = Settings.from_env(env, dotenv=None)
    assert (settings.s3_bucket, settings.s3_region) == ("photos", "eu-west-1")
    assert settings.s3_secret_key == S3_ENV["AINDEX_S3_SECRET_KEY"]
    for shown in (repr(settings), str(settings)):
        assert "very-secret" not in shown and "AKIDEXAMPLE" not in shown
        assert "db-password" not in shown and "***" in shown
        assert "http://127.0.0.1:8333" in shown


@pytest.mark.parametrize(
    "missing", ["AINDEX_S3_ENDPOINT", "AINDEX_S3_ACCESS_KEY", "AINDEX_S3_SECRET_KEY"]
)
def test_s3_without_a_required_variable_names_it(missing):
    env = {name: value for name, value in S3_ENV.items() if name != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(env, dotenv=None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AINDEX_OBJECT_STORE": "ftp"}, "AINDEX_OBJECT_STORE"),
        ({**S3_ENV, "AINDEX_S3_ENDPOINT": "127.0.0.1:8333"}, "AINDEX_S3_ENDPOINT"),
        ({**S3_ENV, "AINDEX_S3_ENDPOINT": "http://h:1/bucket"}, "must not have a path"),
        ({**S3_ENV, "AINDEX_S3_BUCKET": "No_Such"}, "AINDEX_S3_BUCKET"),
        ({"AINDEX_DATABASE_URL": "mysql://x/y"}, "AINDEX_DATABASE_URL"),
    ],
)
def test_bad_values_are_refused_with_the_variable_name(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env, dotenv=None)


def test_dotenv_fills_in_without_overriding_the_environment(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# local development\n"
        "export AINDEX_DATA_DIR=/srv/aindex\n"
        'AINDEX_S3_BUCKET="from-dotenv"\n'
        "AINDEX_S3_REGION=us-east-1  # comment\n"
    )
    settings = Settings.from_env({"AINDEX_S3_BUCKET": "from-env"}, dotenv=dotenv)
    assert settings.data_dir == Path("/srv/aindex")
    assert settings.s3_bucket == "from-env"
    assert settings.s3_region == "us-east-1"
    assert Settings.from_env({}, dotenv=tmp_path / "absent.env").data_dir == Path("aindex_data")
    dotenv.write_text("this is not an assignment\n")
    with pytest.raises(SettingsError, match=r"\.env"):
        Settings.from_env({}, dotenv=dotenv)


def test_settings_are_hashable_and_comparable():
    assert Settings.from_env({}, dotenv=None) == Settings()
    assert len({Settings(), Settings()}) == 1
