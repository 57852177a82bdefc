"""The CI context holds no credentials (issue 16: Jenkins's GIT_URL carried the clone
token into the registered model-version tags)."""

from __future__ import annotations

import json
from pathlib import Path

from ci_compress.ci.env import detect

TOKEN = "tok-Zq96-secret"


def test_urls_lose_their_userinfo_at_the_source() -> None:
    env = {
        "JENKINS_URL": "https://jenkins.example/",
        "GIT_URL": f"https://jenkins-bot:{TOKEN}@git.example/acme/models.git",
        "BUILD_URL": f"https://jenkins-bot:{TOKEN}@jenkins.example/job/gate/7/",
        "GIT_COMMIT": "0" * 40,
        "GIT_BRANCH": "origin/main",
    }
    ci = detect(env, Path("."))
    assert ci.repository == "https://git.example/acme/models.git"
    assert ci.job_url == ci.pipeline_url == "https://jenkins.example/job/gate/7/"
    assert ci.tags()["ci.repository"] == "https://git.example/acme/models.git"
    recorded = json.dumps(ci.tags()) + json.dumps(vars(ci))
    assert TOKEN not in recorded and "jenkins-bot" not in recorded


def test_other_urls_are_left_alone() -> None:
    env = {
        "JENKINS_URL": "https://jenkins.example/",
        "GIT_URL": "git@git.example:acme/models.git",  # scp form: no password possible
        "BUILD_URL": "https://jenkins.example/job/gate/7/?by=a@b",
    }
    ci = detect(env, Path("."))
    assert ci.repository == "git@git.example:acme/models.git"
    assert ci.job_url == "https://jenkins.example/job/gate/7/?by=a@b"
