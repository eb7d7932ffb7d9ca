from fastapi.testclient import TestClient

from easel_webui.app import app


def test_health_route_answers_ok_with_version():
    response = TestClient(app).get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
