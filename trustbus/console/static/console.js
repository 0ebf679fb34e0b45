"use strict";
// The console's few behaviours: poll the live page, answer holds, draw an incident and decide it again.
(function () {
  async function call(url, body) {
    const options = body === undefined ? {} : {
      method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body),
    };
    const response = await fetch(url, options);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
      tr.appendChild(td);
    }
    return tr;
  }

  function incidentLink(correlation) {
    const a = document.createElement("a");
    a.href = "/incident?correlation=" + encodeURIComponent(correlation);
    a.textContent = correlation;
    return a;
  }

  // Live page: new decisions on top, refusals redrawn, every two seconds.
  const live = document.getElementById("live");
  if (live) {
    let last = Number(live.dataset.last);
    const poll = async () => {
      try {
        const state = await call("/api/live?after=" + last);
        const body = document.querySelector("#decisions tbody");
        for (const d of state.decisions) {
          body.insertBefore(row([d.seq, d.verdict, d.reasons.join(","), d.kind, d.sender, d.deliver_to.join(","),
            d.effective_taint.join(","), incidentLink(d.correlation_id)], "fresh verdict-" + d.verdict), body.firstChild);
        }
        last = state.last;
        live.dataset.last = String(last);
        const refused = document.querySelector("#refusals tbody");
        refused.replaceChildren(...state.refusals.reverse().map((r) => row(
          [r.record_seq, r.reason, r.subject, r.claimed_sender || "", r.detail, r.recorded_by])));
      } catch (error) {
        console.error(error);
      }
    };
    setInterval(poll, 2000);
  }

  // Holds page: Approve / Deny sign and send the answer as the console's operator.
  for (const button of document.querySelectorAll("#holds button")) {
    button.addEventListener("click", async () => {
      const tr = button.closest("tr");
      const outcome = tr.querySelector(".outcome");
      tr.querySelectorAll("button").forEach((b) => { b.disabled = true; });
      outcome.textContent = "sending…";
      try {
        const d = await call("/api/holds/" + encodeURIComponent(tr.dataset.envelope), {
          approve: button.classList.contains("approve"), note: tr.querySelector(".note").value,
        });
        outcome.textContent = (d.verdict === "accept" ? "released to " + d.deliver_to.join(",") : "dropped") +
          " (approval " + d.approval_id + " by " + d.approver + ")";
        tr.dataset.outcome = d.verdict;
        tr.classList.add("answered");
      } catch (error) {
        outcome.textContent = error.message;
        tr.dataset.outcome = "error";
        tr.querySelectorAll("button").forEach((b) => { b.disabled = false; });
      }
    });
  }

  // Incident page: the causal graph, and the re-decision beside it.
  const modelTag = document.getElementById("graph-model");
  if (modelTag) {
    const model = JSON.parse(modelTag.textContent);
    window.incidentModel = model;
    const colour = {envelope: "#3b6ea5", decision: "#2e8b57", hold: "#d49a00", effect: "#7b4fa0", quarantine: "#b22222"};
    window.incidentGraph = cytoscape({
      container: document.getElementById("graph"),
      elements: {nodes: model.nodes, edges: model.edges},
      layout: {name: "breadthfirst", directed: true, spacingFactor: 1.05},
      style: [
        {selector: "node", style: {
          "label": "data(label)", "text-wrap": "wrap", "text-valign": "center", "color": "#fff", "font-size": 9,
          "shape": "round-rectangle", "width": 130, "height": 44, "text-max-width": 124,
          "background-color": (n) => colour[n.data("type")] || "#666"}},
        {selector: "node[verdict = 'reject']", style: {"background-color": "#b22222"}},
        {selector: "node[type = 'hold']", style: {"shape": "diamond", "width": 110, "height": 60}},
        {selector: "node[type = 'quarantine']", style: {"shape": "octagon"}},
        {selector: "node.changed", style: {"border-width": 4, "border-color": "#ff0"}},
        {selector: "edge", style: {
          "label": "data(label)", "font-size": 9, "color": "#b22222", "text-background-color": "#fff",
          "text-background-opacity": 1, "curve-style": "bezier", "target-arrow-shape": "triangle",
          "width": 1.5, "line-color": "#99a", "target-arrow-color": "#99a"}},
        {selector: "edge[label != '']", style: {"line-color": "#e08080", "target-arrow-color": "#e08080"}},
      ],
    });
    document.getElementById("redecide").addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = document.getElementById("redecided");
      try {
        const rows = await call("/api/redecide", {
          correlation: model.correlation, policy: event.target.policy.value,
        });
        const table = document.createElement("table");
        table.id = "redecided-table";
        table.appendChild(row(["envelope", "sender", "kind", "recorded", "now", "changed"]));
        for (const r of rows) {
          const recorded = r.recorded ? r.recorded.verdict + " " + r.recorded.reasons.join(",") : "-";
          const tr = row([r.id, r.sender, r.kind, recorded, r.now.verdict + " " + r.now.reasons.join(","),
            r.changed ? "yes" : ""]);
          if (r.changed) tr.lastChild.className = "changed";
          table.appendChild(tr);
          window.incidentGraph.$id("envelope:" + r.id).toggleClass("changed", r.changed);
        }
        out.replaceChildren(table);
      } catch (error) {
        out.textContent = error.message;
      }
    });
  }
})();
