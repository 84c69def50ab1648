#!/usr/bin/python3
"""The web console in headless Chromium (Selenium), run by console.sh.

Two certificate managers in two browser sessions (cm1 files, cm2 approves),
the KRA's completion through the CLI (--complete SCRIPT ID), hostile data shown
as text, a call without the CSRF token and a cross-origin form post refused,
the auditor's and the administrator's pages, logout.  Screenshots of each page
go to --shots.  Any failed expectation raises: the exit status is not 0.
"""
import argparse
import functools
import http.server
import os
import subprocess
import sys
import threading
import time

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

PASSWORDS = {}
WAIT = 15


def log(msg):
    print('# ' + msg, flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def browser(home):
    opts = webdriver.ChromeOptions()
    opts.binary_location = '/usr/bin/chromium'
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
              '--window-size=1280,1000', '--no-first-run', '--disable-extensions',
              '--user-data-dir=' + home):
        opts.add_argument(a)
    # The test CA is trusted through $HOME/.pki/nssdb (console.sh): no --ignore-certificate-errors.
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    return webdriver.Chrome(service=Service('/usr/bin/chromedriver'), options=opts)


def wait_for(d, cond, what):
    try:
        # A page re-renders after each answer: an element found a moment ago may be gone; look again.
        return WebDriverWait(d, WAIT, ignored_exceptions=(StaleElementReferenceException,
                                                          NoSuchElementException)).until(cond)
    except TimeoutException:
        status = d.find_element(By.ID, 'status').text if d.find_elements(By.ID, 'status') else ''
        raise AssertionError('timed out waiting for %s (status line: %r, url %s)' % (what, status, d.current_url))


def text_is(d, elem_id, want):
    return wait_for(d, lambda d: d.find_elements(By.ID, elem_id) and d.find_element(By.ID, elem_id).text == want,
                    '#%s to read %r' % (elem_id, want))


def shot(d, shots, name):
    path = os.path.join(shots, name + '.png')
    d.save_screenshot(path)
    log('screenshot ' + path)


def login(d, url, user, password=None):
    """Log in with the keyboard only: type, Tab, type, Enter."""
    d.get(url + '/console/')
    name = wait_for(d, EC.presence_of_element_located((By.CSS_SELECTOR, '#login-form input[type=text]')), 'login form')
    check(d.switch_to.active_element == name, 'the account field does not have the focus')
    name.send_keys(user)
    d.switch_to.active_element.send_keys(Keys.TAB)
    d.switch_to.active_element.send_keys(password or PASSWORDS[user], Keys.ENTER)
    if password is not None:  # a wrong one: the service's refusal is shown, no browser dialog
        wait_for(d, lambda d: 'authentication required' in d.find_element(By.ID, 'status').text, 'refusal shown')
        check(d.find_element(By.ID, 'who').get_attribute('hidden') is not None, 'logged in with a wrong password')
        return
    wait_for(d, lambda d: user in d.find_element(By.ID, 'who-name').text, user + ' logged in')
    # The label of each field names it (for screen readers as for people).
    check(not d.find_elements(By.CSS_SELECTOR, 'input:not([id])'), 'an input without an id for its label')


def no_script_ran(d, where):
    check(d.execute_script('return typeof window.p11pwned') == 'undefined', 'a hostile script ran on ' + where)
    check(not d.find_elements(By.CSS_SELECTOR, '#view script, #view img'), 'markup from data became elements on ' + where)


def state_of(d, url, rid):
    """The request's state as its page shows it, freshly loaded (a reload: the session survives it)."""
    target = url + '/console/#/recovery/%s' % rid
    if d.current_url == target:
        d.refresh()
    else:
        d.get(target)
    return wait_for(d, lambda d: d.find_elements(By.ID, 'recovery-state') and
                    d.find_element(By.ID, 'recovery-state').text, 'request %s' % rid)


def evil_server(directory, target_url, rid):
    """A page on another origin (http://127.0.0.1:PORT) that posts a form to the service's approve endpoint."""
    with open(os.path.join(directory, 'evil.html'), 'w') as f:
        f.write('<!doctype html><html><body><form id="f" method="POST" action="%s/api/v1/recoveries/%s/approve">'
                '<input name="x" value="1"></form><script>document.getElementById("f").submit();</script>'
                '</body></html>' % (target_url, rid))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--url', required=True)
    ap.add_argument('--shots', required=True)
    ap.add_argument('--dir', required=True)
    ap.add_argument('--complete', required=True)
    ap.add_argument('--hostile-subject', required=True)
    a = ap.parse_args()
    url = a.url
    for u in ('cm1', 'cm2', 'audrey', 'admin'):
        with open(os.path.join(a.dir, u + '.pw')) as f:
            PASSWORDS[u] = f.read().strip()
    t0 = time.time()
    b1 = browser(os.path.join(a.dir, 'chrome1'))
    b2 = browser(os.path.join(a.dir, 'chrome2'))
    try:
        log('cm1 logs in (keyboard only) and searches')
        b1.get(url + '/console/')
        wait_for(b1, EC.presence_of_element_located((By.ID, 'login-form')), 'login form')
        shot(b1, a.shots, '01-login')
        login(b1, url, 'cm1', password='not-the-password')
        login(b1, url, 'cm1')
        check(b1.get_cookies() == [] or all(c.get('httpOnly') for c in b1.get_cookies()),
              'a cookie readable by scripts')
        check(b1.execute_script('return document.cookie') == '', 'document.cookie shows the session')
        check(b1.execute_script('return window.localStorage.length + window.sessionStorage.length') == 0,
              'something in web storage')
        b1.get(url + '/console/#/search?subject=Alice')
        link = wait_for(b1, EC.element_to_be_clickable((By.LINK_TEXT, 'CN=Alice Console,O=Example')), 'search result')
        shot(b1, a.shots, '02-search')
        link.send_keys(Keys.ENTER)
        text_is(b1, 'record-subject', 'CN=Alice Console,O=Example')
        shot(b1, a.shots, '03-record')

        log('cm1 files a request with a reason holding markup')
        wait_for(b1, EC.element_to_be_clickable((By.ID, 'file-request')), 'request link').click()
        reason = wait_for(b1, EC.presence_of_element_located((By.ID, 'request-reason')), 'request form')
        markup_reason = 'Laptop stolen <img src=x onerror="window.p11pwned=3"> &lt;i&gt;'
        reason.send_keys(markup_reason)
        shot(b1, a.shots, '04-request-form')
        b1.find_element(By.CSS_SELECTOR, '#request-form button[type=submit]').click()
        text_is(b1, 'recovery-state', 'pending')
        rid = b1.current_url.rsplit('/', 1)[1]
        text_is(b1, 'recovery-reason', markup_reason)
        no_script_ran(b1, 'the request page')
        check(not b1.find_elements(By.ID, 'approve'), 'the requester is offered to approve')
        shot(b1, a.shots, '05-request-pending')

        log('cm2, in another browser session, sees it among its approvals and approves')
        login(b2, url, 'cm2')
        b2.get(url + '/console/#/approvals')
        btn = wait_for(b2, EC.element_to_be_clickable((By.CSS_SELECTOR, '[data-approve="%s"]' % rid)), 'approve button')
        no_script_ran(b2, 'the approvals page')
        shot(b2, a.shots, '06-approvals')
        btn.send_keys(Keys.ENTER)
        wait_for(b2, lambda d: 'now released' in d.find_element(By.ID, 'status').text, 'approval done')
        check(state_of(b1, url, rid) == 'released', 'cm1 does not see the request released')
        text_is(b1, 'recovery-approvals', '1 of 1')
        shot(b1, a.shots, '07-request-released')

        log('the KRA completes with the CLI; the console shows completed')
        out = subprocess.run([a.complete, rid], capture_output=True, text=True)
        check(out.returncode == 0, 'recovery complete --server: %d %s %s' % (out.returncode, out.stdout, out.stderr))
        with open(os.path.join(a.dir, 'completed.id'), 'w') as f:
            f.write(rid)
        wait_for(b1, EC.element_to_be_clickable((By.ID, 'refresh')), 'refresh').click()
        text_is(b1, 'recovery-state', 'completed')
        check(b1.find_element(By.CSS_SELECTOR, '#progress [aria-current=step]').text == 'completed', 'progress')
        shot(b1, a.shots, '08-request-completed')

        log('hostile certificate: shown as text, no script runs')
        b1.get(url + '/console/#/search?subject=p11pwned')
        want_subject = a.hostile_subject
        link = wait_for(b1, EC.element_to_be_clickable((By.LINK_TEXT, want_subject)), 'the hostile record in the results')
        no_script_ran(b1, 'the search results')
        shot(b1, a.shots, '09-hostile-search')
        link.click()
        text_is(b1, 'record-subject', want_subject)
        no_script_ran(b1, 'the hostile record')
        wait_for(b1, EC.element_to_be_clickable((By.ID, 'file-request')), 'request link').click()
        wait_for(b1, EC.presence_of_element_located((By.ID, 'request-reason')), 'form').send_keys('Hostile <b>test</b>')
        b1.find_element(By.CSS_SELECTOR, '#request-form button[type=submit]').click()
        text_is(b1, 'recovery-state', 'pending')
        hostile_rid = b1.current_url.rsplit('/', 1)[1]
        no_script_ran(b1, 'the hostile request')
        shot(b1, a.shots, '10-hostile-request')

        log('a call with the session cookie but without the CSRF token: 403')
        status = b1.execute_async_script(
            'const done = arguments[arguments.length - 1];'
            'fetch("/api/v1/recoveries/%s/cancel", {method: "POST", credentials: "same-origin",'
            ' headers: {"Content-Type": "application/json"}, body: JSON.stringify({reason: "no token"})})'
            '.then(r => done(r.status), e => done(String(e)));' % hostile_rid)
        check(status == 403, 'POST without X-CSRF-Token: %r' % status)

        log('a cross-origin form post (another origin, cm2 logged in there): refused, nothing approved')
        srv = evil_server(a.dir, url, hostile_rid)
        try:
            b2.get('http://127.0.0.1:%d/evil.html' % srv.server_address[1])
            wait_for(b2, lambda d: d.current_url.startswith(url + '/api/v1/'), 'the form post to land')
            body = b2.find_element(By.TAG_NAME, 'body').text
            check('cross-site request refused' in body, 'the cross-origin post was not refused: %r' % body)
            shot(b2, a.shots, '11-cross-origin-refused')
        finally:
            srv.shutdown()
        check(state_of(b1, url, hostile_rid) == 'pending', 'the cross-origin post changed the request')
        text_is(b1, 'recovery-approvals', '0 of 1')

        log('cm2 denies it with a reason from the console')
        b2.get(url + '/console/#/recovery/%s' % hostile_rid)
        wait_for(b2, EC.presence_of_element_located((By.ID, 'deny-reason')), 'deny form').send_keys(
            'not this one <u>x</u>')
        b2.find_element(By.ID, 'deny').click()
        text_is(b2, 'recovery-state', 'denied')
        shot(b2, a.shots, '12-denied')

        log('the auditor: audit trail with the refusals, chain intact, newest checkpoint')
        b2.find_element(By.ID, 'logout').click()
        wait_for(b2, EC.presence_of_element_located((By.ID, 'login-form')), 'login form after logout')
        login(b2, url, 'audrey')
        b2.get(url + '/console/#/audit?action=auth.csrf')
        wait_for(b2, lambda d: 'intact' in d.find_element(By.ID, 'chain').text, 'chain status')
        wait_for(b2, lambda d: d.find_elements(By.CSS_SELECTOR, '#view tbody tr td') and
                 'no X-CSRF-Token' in d.find_element(By.ID, 'view').text, 'auth.csrf events')
        check('cross-site' not in b2.find_element(By.ID, 'chain').text, 'chain')
        no_script_ran(b2, 'the audit trail')
        shot(b2, a.shots, '13-audit')
        b2.find_element(By.ID, 'logout').click()
        wait_for(b2, EC.presence_of_element_located((By.ID, 'login-form')), 'login form after logout')

        log('the administrator: policy and accounts, read only')
        login(b2, url, 'admin')
        b2.get(url + '/console/#/admin')
        wait_for(b2, lambda d: 'recovery_approvals' in d.find_element(By.ID, 'view').text, 'policy table')
        check('audrey' in b2.find_element(By.ID, 'view').text, 'accounts table')
        shot(b2, a.shots, '14-admin')

        log('zoom 200 %: the request page still fits (no horizontal scrolling of the page)')
        b1.get(url + '/console/#/recovery/%s' % rid)
        text_is(b1, 'recovery-state', 'completed')
        b1.execute_script('document.body.style.zoom = "200%"')
        time.sleep(0.3)
        overflow = b1.execute_script('return document.documentElement.scrollWidth - document.documentElement.clientWidth')
        shot(b1, a.shots, '15-zoom-200')
        b1.execute_script('document.body.style.zoom = ""')
        check(overflow <= 4, 'at 200 %% the page scrolls sideways by %s px' % overflow)

        log('cm1 logs out: the cookie is gone, the console asks for a login again')
        b1.find_element(By.ID, 'logout').click()
        wait_for(b1, EC.presence_of_element_located((By.ID, 'login-form')), 'login form after logout')
        b1.get(url + '/console/#/search')
        wait_for(b1, EC.presence_of_element_located((By.ID, 'login-form')), 'login form after reload')
        errors = [e for e in b1.get_log('browser') + b2.get_log('browser')
                  if e['level'] == 'SEVERE' and 'Content Security Policy' in e['message']]
        check(not errors, 'CSP violations: %r' % errors)
        log('browser part: %.1f s' % (time.time() - t0))
    finally:
        b1.quit()
        b2.quit()


if __name__ == '__main__':
    try:
        main()
    except AssertionError as e:
        print('FAIL: %s' % e, file=sys.stderr)
        sys.exit(1)
