"""forewarn's page in the Airflow UI.

Mounts the page's FastAPI app (``forewarn.ui``) under ``/forewarn`` in the API server and adds
it to the UI's navigation ("forewarn", at the top level), where Airflow shows it in the page frame.
The app is built when the API server loads plugins, not when DAGs are parsed.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from forewarn.ui import create_app

URL_PREFIX = "/forewarn"


class ForewarnPlugin(AirflowPlugin):
    name = "forewarn"
    fastapi_apps = [{"app": create_app(prefix=URL_PREFIX), "url_prefix": URL_PREFIX, "name": "forewarn"}]
    external_views = [
        {
            "name": "forewarn",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "nav_top_level": True,
            "url_route": "forewarn",
        }
    ]
