"""A small read-only dashboard at ``/`` (one static page, no external assets), and ``/healthz``.

The page holds no data itself: the operator pastes the admin token (kept in
the browser tab's sessionStorage only) and the page reads ``/v1/admin/status``
and ``/v1/admin/devices`` with it every few seconds.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from engine.errors import StoreError
from engine.server._http import json_response
from engine.server.state import ServerState

__all__ = ["PAGE", "router"]

log = logging.getLogger("engine.server")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>engine serve</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left}
.on{color:#080}.off{color:#a00}#err{color:#a00}code{background:#f4f4f4;padding:0 .2em}
</style></head><body>
<h1>Fleet rollout engine</h1>
<form id="login">Admin token: <input id="token" type="password" size="50" autocomplete="off">
<button>Show</button> <span id="err"></span></form>
<p>The token is in <code>.engine/admin.token</code> of the operator repo (or $ENGINE_ADMIN_TOKEN).
API: <a href="/docs">/docs</a>.</p>
<div id="out"></div>
<script>
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
function table(rows, cols) {
  if (!rows.length) return "<p>none</p>";
  let h = "<table><tr>" + cols.map((c) => "<th>" + esc(c) + "</th>").join("") + "</tr>";
  for (const r of rows) {
    h += "<tr>" + cols.map((c) => "<td>" + (c === "online"
      ? (r[c] ? '<span class="on">online</span>' : '<span class="off">offline</span>')
      : esc(typeof r[c] === "object" && r[c] !== null ? JSON.stringify(r[c]) : r[c]))
      + "</td>").join("") + "</tr>";
  }
  return h + "</table>";
}
async function get(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + sessionStorage.token}});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
async function refresh() {
  if (!sessionStorage.token) return;
  try {
    const [s, d] = await Promise.all([get("/v1/admin/status"), get("/v1/admin/devices")]);
    $("err").textContent = "";
    let h = "<h2>Fleet</h2>" + table([s], ["time", "devices", "enrolled", "online", "offline",
      "revoked"]);
    h += "<h2>Versions</h2>" + table(Object.entries(s.versions).map(([v, n]) =>
      ({version: v, devices: n})), ["version", "devices"]);
    const rollouts = Array.isArray(s.rollouts) ? s.rollouts : [];
    const cols = rollouts.length ? Object.keys(rollouts[0]) : [];
    h += "<h2>Rollouts</h2>" + table(rollouts, cols);
    h += "<h2>Devices</h2>" + table(d, ["device", "platform", "agent_version", "last_checkin",
      "online", "last_result", "heartbeat_version", "revoked"]);
    $("out").innerHTML = h;
  } catch (e) { $("err").textContent = e.message; }
}
$("login").onsubmit = (e) => {
  e.preventDefault(); sessionStorage.token = $("token").value.trim(); refresh();
};
refresh(); setInterval(refresh, 5000);
</script></body></html>
"""


def router(state: ServerState) -> APIRouter:
    """The dashboard page and the load balancer's health check."""
    api = APIRouter(tags=["dashboard"])

    @api.get(
        "/healthz",
        response_model=None,
        responses={503: {"description": "the store cannot be read"}},
        tags=["health"],
    )
    async def healthz() -> Response:
        """200 when this replica can read its store (for load balancers), else 503."""
        try:
            with state.store.read() as conn:
                conn.exec_driver_sql("SELECT 1").scalar()
        except StoreError as e:
            log.error("health check: %s", e)
            return json_response({"status": "store unavailable"}, status=503)
        return json_response({"status": "ok"})

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        """The dashboard page."""
        return HTMLResponse(PAGE)

    return api
