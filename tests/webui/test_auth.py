"""Sign-in, sessions, revocation, CSRF, throttling and the rotating admin password."""

from __future__ import annotations

import json
import time

import boto3

from easel_webui.auth import SESSION_COOKIE

from .conftest import ADMIN_PASSWORD, ADMIN_SECRET, REGION, login


def test_admin_signs_in_with_the_secret_password(world):
    client = world.client()
    response = login(client, "admin", ADMIN_PASSWORD)
    assert response.status_code == 303
    assert client.get("/users").status_code == 200


def test_wrong_password_is_refused_without_a_session(world):
    client = world.client()
    response = login(client, "admin", "not-the-password")
    assert response.status_code == 401
    assert "Wrong user name or password" in response.text
    assert SESSION_COOKIE not in client.cookies
    assert client.get("/generate").status_code == 303


def test_table_user_signs_in_and_password_is_stored_as_argon2(world):
    world.add_user("carol", "carol-password-1")
    record = world.portal.table.get("user#carol", "profile")
    assert record["password_hash"].startswith("$argon2")
    assert "carol-password-1" not in json.dumps(record)
    assert login(world.client(), "carol", "carol-password-1").status_code == 303


def test_session_cookie_is_http_only_and_lax(world):
    client = world.client()
    response = login(client, "admin", ADMIN_PASSWORD)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_session_is_valid_on_another_portal_task(world):
    """Two app instances (two Fargate tasks) share only the table and the secrets."""
    from easel_webui.app import create_app

    world.add_user("dave")
    client = world.signed_in("dave")
    other_task = create_app(settings=world.settings, clients=world.portal.clients)
    from fastapi.testclient import TestClient

    other = TestClient(other_task, follow_redirects=False)
    other.cookies.set(SESSION_COOKIE, client.cookies[SESSION_COOKIE])
    assert other.get("/gallery").status_code == 200
    other.cookies.clear()
    assert other.get("/gallery").status_code == 303


def test_tampered_session_is_refused(world):
    client = world.signed_in("admin")
    value = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, value[:-3] + ("AAA" if not value.endswith("AAA")
                                                     else "BBB"))
    assert client.get("/users").status_code == 303


def test_changed_password_revokes_existing_sessions(world):
    world.add_user("erin")
    session = world.signed_in("erin")
    assert session.get("/gallery").status_code == 200
    admin = world.signed_in("admin")
    response = admin.post("/users/erin/password", data={"password": "brand-new-password"})
    assert response.status_code == 303
    assert session.get("/gallery").status_code == 303  # back to the sign-in page
    assert login(world.client(), "erin", "user-password-123").status_code == 401
    assert login(world.client(), "erin", "brand-new-password").status_code == 303


def test_role_change_revokes_sessions(world):
    world.add_user("frank")
    session = world.signed_in("frank")
    admin = world.signed_in("admin")
    assert admin.post("/users/frank/role", data={"role": "admin"}).status_code == 303
    assert session.get("/gallery").status_code == 303
    promoted = world.signed_in("frank")
    assert promoted.get("/users").status_code == 200


def test_deleted_user_loses_the_session(world):
    world.add_user("gina")
    session = world.signed_in("gina")
    admin = world.signed_in("admin")
    assert admin.post("/users/gina/delete").status_code == 303
    assert session.get("/gallery").status_code == 303


def test_own_password_change_needs_the_current_password(world):
    world.add_user("hank")
    session = world.signed_in("hank")
    wrong = session.post("/account/password", data={
        "current_password": "nope-nope-nope", "new_password": "another-password-9",
        "confirm_password": "another-password-9"})
    assert "not+right" in wrong.headers["location"] or "not%20right" in wrong.headers["location"]
    ok = session.post("/account/password", data={
        "current_password": "user-password-123", "new_password": "another-password-9",
        "confirm_password": "another-password-9"})
    assert ok.headers["location"].startswith("/login")
    assert login(world.client(), "hank", "another-password-9").status_code == 303


def test_logout_clears_the_cookie(world):
    client = world.signed_in("admin")
    response = client.post("/logout")
    assert response.status_code == 303
    assert client.get("/users").status_code == 303


def test_logout_revokes_the_session_on_the_server_not_only_in_the_browser(world):
    world.add_user("ivy")
    leaving, staying = world.signed_in("ivy"), world.signed_in("ivy")
    copied = world.client()  # the same cookie, kept elsewhere (another tab, a stolen copy)
    copied.cookies.set(SESSION_COOKIE, leaving.cookies.get(SESSION_COOKIE))
    assert copied.get("/account").status_code == 200
    assert leaving.post("/logout").status_code == 303
    assert copied.get("/account").status_code == 303  # back to the sign-in page
    assert staying.get("/account").status_code == 200  # the user's other session goes on


def test_rotated_admin_password_works_and_old_stops_after_cache_ttl(world_factory):
    world = world_factory(EASEL_SECRET_CACHE_SECONDS="1")
    old_session = world.signed_in("admin")
    secrets = boto3.client("secretsmanager", region_name=REGION)
    rotated = "R0tatedAdminPassword99"
    secrets.put_secret_value(SecretId=ADMIN_SECRET,
                             SecretString=json.dumps({"username": "admin", "password": rotated}))
    time.sleep(1.1)
    assert login(world.client(), "admin", ADMIN_PASSWORD).status_code == 401
    assert login(world.client(), "admin", rotated).status_code == 303
    # the rotation also ends sessions signed in with the old password
    assert old_session.get("/users").status_code == 303


def test_admin_secret_is_read_with_awscurrent(world):
    calls = []
    secrets = world.portal.secrets
    real = secrets._client

    class Spy:
        def get_secret_value(self, **kwargs):
            calls.append(kwargs)
            return real.get_secret_value(**kwargs)

    secrets._client = Spy()
    secrets._values.clear()
    assert login(world.client(), "admin", ADMIN_PASSWORD).status_code == 303
    assert calls and all(c["VersionStage"] == "AWSCURRENT" for c in calls)


def test_login_throttling_is_shared_through_the_table(world_factory):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="3")
    world.add_user("ivan")
    for _ in range(3):
        assert login(world.client(), "ivan", "wrong-password-x").status_code == 401
    # even the right password is refused now, on any task
    blocked = login(world.client(), "ivan", "user-password-123")
    assert blocked.status_code == 429
    assert "Too many failed sign-ins" in blocked.text
    items = world.portal.table.client.scan(TableName=world.settings.table)["Items"]
    throttle = [i for i in items if i["pk"]["S"] == "throttle#ivan"]
    assert throttle and "ttl" in throttle[0]
    # other users are not affected
    world.add_user("judy")
    assert login(world.client(), "judy", "user-password-123").status_code == 303


def test_forms_without_csrf_token_are_refused(world):
    world.add_user("kate")
    admin = world.signed_in("admin")
    del admin.headers["X-CSRF-Token"]
    for path, data in [
        ("/users", {"username": "newbie", "password": "p" * 12, "role": "user"}),
        ("/users/kate/role", {"role": "admin"}),
        ("/users/kate/delete", {}),
        ("/endpoints", {"name": "x"}),
        ("/logout", {}),
    ]:
        response = admin.post(path, data=data)
        assert response.status_code == 403, path
        assert "security token" in response.text
    assert world.portal.auth.lookup("newbie") is None
    assert world.portal.auth.lookup("kate").role == "user"


def test_csrf_token_of_another_session_is_refused(world):
    world.add_user("liam")
    liam = world.signed_in("liam")
    admin = world.signed_in("admin")
    admin.headers["X-CSRF-Token"] = liam.headers["X-CSRF-Token"]
    assert admin.post("/users", data={"username": "newbie", "password": "p" * 12,
                                      "role": "user"}).status_code == 403


def test_csrf_token_in_the_form_field_is_accepted(world):
    admin = world.signed_in("admin")
    token = admin.headers.pop("X-CSRF-Token")
    response = admin.post("/users", data={"username": "mona", "password": "p" * 12,
                                          "role": "user", "csrf_token": token})
    assert response.status_code == 303
    assert world.portal.auth.lookup("mona") is not None


def test_login_form_needs_its_csrf_cookie(world):
    client = world.client()
    response = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                            "csrf_token": "forged"})
    assert response.status_code == 403
    assert SESSION_COOKIE not in client.cookies


def test_login_redirects_only_to_local_paths(world):
    client = world.client()
    page = client.get("/login?next=//evil.example/")
    assert 'value="/"' in page.text


def test_plain_string_admin_secret_is_taken_as_the_password(world):
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.put_secret_value(SecretId=ADMIN_SECRET, SecretString="PlainPassword123")
    world.portal.secrets._values.clear()
    assert login(world.client(), "admin", "PlainPassword123").status_code == 303


def test_a_successful_sign_in_clears_the_failure_count(world_factory):
    world = world_factory(EASEL_LOGIN_MAX_FAILURES="3")
    world.add_user("nora")
    for _ in range(2):
        assert login(world.client(), "nora", "wrong-password-x").status_code == 401
    assert login(world.client(), "nora", "user-password-123").status_code == 303
    for _ in range(2):
        assert login(world.client(), "nora", "wrong-password-x").status_code == 401
    assert login(world.client(), "nora", "user-password-123").status_code == 303


def test_a_refused_new_user_keeps_the_name_and_role_but_never_echoes_the_password(world):
    admin = world.signed_in("admin")
    secret = "short-pw"  # under the 12-character minimum
    response = admin.post("/users", data={"username": "nora", "password": secret,
                                          "role": "admin"})
    assert response.status_code == 400
    assert "12" in response.text  # the error names the rule
    assert 'value="nora"' in response.text
    assert '<option value="admin" selected' in response.text
    assert secret not in response.text
    assert world.portal.auth.lookup("nora") is None


def test_a_deleted_users_name_is_never_given_to_a_new_user(world):
    world.add_user("ursula")
    admin = world.signed_in("admin")
    assert admin.post("/users/ursula/delete").status_code == 303
    again = admin.post("/users", data={"username": "ursula", "password": "p" * 12,
                                       "role": "user"})
    assert again.status_code == 409
    assert "never reused" in again.text and "choose another name" in again.text
    assert world.portal.auth.lookup("ursula") is None
