"""The demo page in a real browser: headless Chromium submits a render job and follows it with
its own EventSource (a client no one here wrote)."""
import shutil

import pytest
import requests

selenium = pytest.importorskip("selenium", reason="pip install selenium (scripts/setup.sh does)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromium-driver are needed (apt install chromium chromium-driver; scripts/setup.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def test_the_demo_page_shows_a_render_job_live_from_its_event_stream(stack, browser):
    edge = stack.start_edge()
    stack.start_worker("render", queue=stack.queue["render"])
    page = requests.get(edge.base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")

    browser.get(edge.base + "/")
    browser.find_element(By.ID, "steps").clear()
    browser.find_element(By.ID, "steps").send_keys("4")
    browser.find_element(By.ID, "delay").clear()
    browser.find_element(By.ID, "delay").send_keys("400")
    browser.find_element(By.ID, "render").click()

    # While the job runs, the bar moves before the end: the page is fed live, not at the end.
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "status").text == "running")
    bar = float(browser.find_element(By.ID, "bar").get_attribute("value"))
    assert 0 < bar < 100
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text in ("succeeded", "failed", "cancelled"))
    assert browser.find_element(By.ID, "status").text == "succeeded"
    assert float(browser.find_element(By.ID, "bar").get_attribute("value")) == 100

    events = browser.execute_script("return window.gangwayEvents")
    # Every event the worker reported, in order, exactly once: log, 4 × progress, done.
    assert [e["id"] for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert [e["kind"] for e in events] == ["log", "progress", "progress", "progress", "progress", "done"]
    log = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#log li")]
    assert log[0] == "log: render started: 4 steps" and log[-1].startswith("done: ")

    job_id = browser.find_element(By.ID, "job").text
    status = requests.get(f"{edge.base}/v1/jobs/{job_id}").json()
    assert status["status"] == "succeeded" and status["percent"] == 100


def test_the_demo_page_gives_way_to_a_route_on_slash(stack):
    edge = stack.start_edge(extra=["--no-demo-page"])
    r = requests.get(edge.base + "/")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
