import NIOCore

/// The page at `GET /` (unless a route takes `/`): submits a render job to
/// `POST /v1/jobs/render` and follows it with the browser's own `EventSource`, showing a
/// progress bar and the job's log live.
enum DemoPage {
    static let html = ByteBuffer(string: #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>Gangway: live job progress</title>
        <style>
          body { font: 16px/1.5 system-ui, sans-serif; max-width: 42rem; margin: 3rem auto; padding: 0 1rem; }
          progress { width: 100%; height: 1.5rem; }
          #log { font-family: ui-monospace, monospace; font-size: 14px; background: #f4f4f4; padding: .5rem 2rem; min-height: 6rem; }
          #status { font-weight: bold; }
        </style>
        </head>
        <body>
        <h1>Gangway</h1>
        <p>Submits a job to <code>POST /v1/jobs/render</code> (202 Accepted once the broker has it), then
        follows <code>/v1/jobs/{id}/events</code> with Server-Sent Events.</p>
        <p>
          <label>Steps <input id="steps" type="number" min="1" max="50" value="5"></label>
          <label>Delay (ms) <input id="delay" type="number" min="0" max="5000" value="400"></label>
          <button id="render">Render</button>
        </p>
        <p>Job <code id="job">–</code>: <span id="status">idle</span> <span id="message"></span></p>
        <progress id="bar" max="100" value="0"></progress>
        <ol id="log"></ol>
        <script>
        "use strict";
        // Every event id received, in order (the browser test reads it).
        window.gangwayEvents = [];
        const $ = (id) => document.getElementById(id);
        let source = null;

        function show(kind, text) {
          const li = document.createElement("li");
          li.textContent = kind + ": " + text;
          li.dataset.kind = kind;
          $("log").appendChild(li);
        }

        function follow(eventsURL) {
          source = new EventSource(eventsURL);
          const record = (e) => { window.gangwayEvents.push({ id: e.lastEventId, kind: e.type }); return JSON.parse(e.data); };
          source.addEventListener("progress", (e) => {
            const d = record(e);
            $("status").textContent = "running";
            $("bar").value = d.percent;
            $("message").textContent = d.message || "";
          });
          source.addEventListener("log", (e) => show("log", record(e).line));
          source.addEventListener("done", (e) => {
            const d = record(e);
            $("bar").value = 100;
            $("status").textContent = "succeeded";
            show("done", JSON.stringify(d));
            source.close();
          });
          for (const kind of ["failed", "cancelled"]) {
            source.addEventListener(kind, (e) => {
              const d = record(e);
              $("status").textContent = kind;
              show(kind, JSON.stringify(d));
              source.close();
            });
          }
          source.addEventListener("reset", (e) => show("reset", e.data));
          source.onerror = () => { if (source.readyState === EventSource.CONNECTING) $("message").textContent = "(reconnecting…)"; };
        }

        $("render").addEventListener("click", async () => {
          if (source) source.close();
          window.gangwayEvents = [];
          $("log").replaceChildren();
          $("bar").value = 0;
          $("status").textContent = "submitting";
          const query = "?steps=" + encodeURIComponent($("steps").value) + "&delay_ms=" + encodeURIComponent($("delay").value);
          const response = await fetch("/v1/jobs/render" + query, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ scene: "demo" }),
          });
          const body = await response.json();
          if (response.status !== 202) {
            $("status").textContent = "refused";
            $("message").textContent = body.detail || response.statusText;
            return;
          }
          $("job").textContent = body.id;
          $("status").textContent = body.status;
          follow(body.events_url);
        });
        </script>
        </body>
        </html>
        """#)
}
