"""harness/urls.py: credentials masked in every URL shape we take, names checked before they become folders."""

from __future__ import annotations

import pytest

from harness.urls import HIDDEN, UnsafeName, inside, is_secret, redact, redact_text, safe_name

SECRETS = ("s3cretPW", "p@ss", "tok3nXYZ", "KEYPASS9", "qpw42", "Abc/d?e#f", "AKIAxyz")

# url -> what is shown; every secret of SECRETS in the url must be gone from the output
CASES = [
    # userinfo
    ("http://alice:s3cretPW@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
    ("https://alice:s3cretPW@mlflow.example.org/path?x=1", "https://alice:***@mlflow.example.org/path?x=1"),
    ("http://:tok3nXYZ@127.0.0.1:5000", "http://:***@127.0.0.1:5000"),
    ("postgresql://u:p@ss@host:5432/db", "postgresql://u:***@host:5432/db"),  # '@' in the password
    ("postgresql+psycopg2://me:s3cretPW@db.internal:5432/optuna", "postgresql+psycopg2://me:***@db.internal:5432/optuna"),
    ("postgresql://me:Abc/d?e#f@db/x", "postgresql://me:***@db/x"),  # '/', '?' and '#' in the password
    ("mysql+pymysql://root:s3cretPW@[::1]:3306/x", "mysql+pymysql://root:***@[::1]:3306/x"),
    ("postgresql://u:@host/db", "postgresql://u:***@host/db"),  # an empty password still says there was one
    # secret query / fragment parameters, any case
    ("postgresql://me@db/x?password=qpw42", "postgresql://me@db/x?password=***"),
    ("http://h:5000/?token=tok3nXYZ&experiment=a", "http://h:5000/?token=***&experiment=a"),
    ("http://h/?access_token=tok3nXYZ", "http://h/?access_token=***"),
    ("http://h/?API_KEY=AKIAxyz", "http://h/?API_KEY=***"),
    ("postgresql://me@db/x?sslmode=require&sslpassword=KEYPASS9", "postgresql://me@db/x?sslmode=require&sslpassword=***"),
    ("http://h/?PassWord=qpw42&Token=tok3nXYZ", "http://h/?PassWord=***&Token=***"),
    ("http://h/x?pass%77ord=qpw42", "http://h/x?pass%77ord=***"),  # a percent-encoded name
    ("https://h/cb#access_token=tok3nXYZ&state=1", "https://h/cb#access_token=***&state=1"),
    ("s3://b/k?X-Amz-Signature=AKIAxyz&X-Amz-Date=1", "s3://b/k?X-Amz-Signature=***&X-Amz-Date=1"),
    ("postgresql://u:s3cretPW@h/db?password=qpw42", "postgresql://u:***@h/db?password=***"),
    # nothing secret: unchanged
    ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://postgres@127.0.0.1:5432/postgres"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////home/me/runs/mlflow.db", "sqlite:////home/me/runs/mlflow.db"),
    ("file:///data/a@b/runs", "file:///data/a@b/runs"),
    ("http://host/x?email=a@b.org", "http://host/x?email=a@b.org"),
    ("http://host:5000/x?email=a@b.org", "http://host:***@b.org"),  # ambiguous: rather too much hidden than a leak
    ("/home/me/runs/sweeps/quick.journal", "/home/me/runs/sweeps/quick.journal"),
    ("runs/sweeps/a@b.journal", "runs/sweeps/a@b.journal"),
    ("", ""),
    # libpq keyword strings, garbage
    ("host=db user=me password=qpw42 dbname=x", "host=db user=me password=*** dbname=x"),
    ("host=db password='p@ss word'", "host=db password=***"),
    ("http://alice:s3cretPW@h\n:5000", HIDDEN),  # a control character: nothing of it is shown
    ("\x00garbage://:s3cretPW@", HIDDEN),
    ("://:s3cretPW@", "://:s3cretPW@"),  # no scheme, no key=value: not a URL, and nothing says what is secret
]


@pytest.mark.parametrize("url, shown", CASES)
def test_redact(url, shown):
    assert redact(url) == shown
    if "://" in url[:20] and not url.startswith("://"):  # a URL: none of the secrets survive
        assert not [s for s in SECRETS if s in url and s in redact(url)]


def test_redact_takes_odd_input_without_raising():
    class Bad:
        def __str__(self):
            raise RuntimeError("no")

    assert redact(None) == ""
    assert redact(42) == "42"
    assert redact(Bad()) == HIDDEN
    assert redact_text(Bad()) == HIDDEN
    assert redact(b"http://a:s3cretPW@h") == "http://a:***@h"


def test_every_url_in_a_message_is_redacted():
    msg = ("API request to http://alice:s3cretPW@127.0.0.1:1/api/2.0/mlflow/runs/get failed; "
           "storage 'postgresql://u:p@ss@db/x?sslpassword=KEYPASS9' (see https://docs.example/x)")
    out = redact_text(msg)
    assert not [s for s in SECRETS if s in out]
    assert out == ("API request to http://alice:***@127.0.0.1:1/api/2.0/mlflow/runs/get failed; "
                   "storage 'postgresql://u:***@db/x?sslpassword=***' (see https://docs.example/x)")
    assert redact_text("no url here: a=b password") == "no url here: a=b password"


@pytest.mark.parametrize("name", ["password", "SSLPASSWORD", "access_token", "x-amz-security-token", "api_key",
                                  "client_secret", "sig", "refresh_token"])
def test_secret_parameter_names(name):
    assert is_secret(name)


@pytest.mark.parametrize("name", ["sslmode", "experiment", "user", "host", "application_name", "options"])
def test_plain_parameter_names(name):
    assert not is_secret(name)


@pytest.mark.parametrize("name", ["quick", "e2e-tiny", "ppo-harness", "a.b_c-1", "x" * 64])
def test_safe_names(name):
    assert safe_name(name, "--experiment") == name


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x", "/abs", ".hidden", "-x", "a b", "x" * 65, "a\\b",
                                  "a\nb", None, 3])
def test_unsafe_names_are_refused_in_one_line(name):
    with pytest.raises(UnsafeName) as e:
        safe_name(name, "--experiment")
    assert str(e.value).startswith("--experiment ") and "\n" not in str(e.value)


def test_inside_refuses_a_path_that_leaves_its_root(tmp_path):
    assert inside(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()
    with pytest.raises(UnsafeName, match="leaves"):
        inside(tmp_path / "out", "..")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeName, match="leaves"):
        inside(tmp_path / "out", "link")


def test_the_report_folder_of_an_experiment_stays_under_reports_out(tmp_path, monkeypatch):
    from reports.collect import ReportError
    from reports.report import _default_out

    monkeypatch.chdir(tmp_path)
    assert _default_out("quick") == tmp_path / "reports" / "out" / "quick"
    assert _default_out("my runs") == tmp_path / "reports" / "out" / "my_runs"  # MLflow allows any name
    for name in ("..", ".", "../..", "x" * 65):
        with pytest.raises(ReportError, match="pass --out DIR"):
            _default_out(name)


def test_a_local_store_refuses_an_experiment_that_leaves_its_artifact_folder(tmp_path):
    from harness.tracking import Store

    store = Store(tmp_path / "runs")
    for name in ("..", "../x", "a/b"):
        with pytest.raises(UnsafeName):
            store.experiment_id(name)
    assert store.client.search_experiments(filter_string="name = '..'") == []
    assert store.experiment_id("ok-name") is not None
