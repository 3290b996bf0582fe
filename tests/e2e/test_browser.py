"""A person in a browser: the landing page, a package lookup, a failed build."""
from __future__ import annotations

import os
import shutil

import pytest
import requests

from tests.conftest import PKGS, ROOT, need
from tests.server import Server

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    need("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1200,1000"):
        options.add_argument(flag)
    # chromium's profile and its temporary files go where the test's files go
    tmp = str(tmp_path_factory.mktemp("chromium"))
    options.add_argument(f"--user-data-dir={tmp}/profile")
    service = Service(shutil.which("chromedriver"), env=dict(os.environ, TMPDIR=tmp))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_landing_lookup_and_failed_build(browser, tmp_path):
    from selenium.webdriver.common.by import By
    os.makedirs(ARTIFACTS, exist_ok=True)
    srv = Server(str(tmp_path), NIXERY_PKGS_PATH=str(PKGS)).start()
    try:
        assert requests.get(srv.url + "/v2/broken/manifests/latest").status_code == 422
        browser.get(srv.url + "/")
        assert f"docker pull {srv.host}/shell/git/htop" in browser.find_element(By.TAG_NAME, "pre").text
        browser.save_screenshot(str(ARTIFACTS / "landing.png"))

        box = browser.find_element(By.NAME, "name")
        box.send_keys("hellp")
        box.submit()
        assert "No package hellp" in browser.find_element(By.ID, "result").text
        browser.find_element(By.LINK_TEXT, "hello").click()
        assert "hello exists: hello-1.0" in browser.find_element(By.ID, "result").text
        browser.save_screenshot(str(ARTIFACTS / "lookup.png"))

        browser.get(srv.url + "/")
        browser.find_element(By.CSS_SELECTOR, "a[href='/builds/broken:latest']").click()
        assert browser.find_element(By.ID, "status").text == "failed"
        assert "fails to build on purpose" in browser.find_element(By.ID, "log").text
        browser.save_screenshot(str(ARTIFACTS / "failed-build.png"))
    finally:
        srv.stop()
