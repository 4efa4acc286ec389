// The board's filters and sorting: no library, no network. Filters start from the page address
// (suite.html?student=convnet3&ipc=10), so a filtered view can be linked.
(function () {
  const table = document.getElementById("accuracy");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const selects = Array.from(document.querySelectorAll("select[data-filter]"));
  const params = new URLSearchParams(window.location.search);
  function apply() {
    let shown = 0;
    for (const row of rows) {
      const visible = selects.every(s => s.value === "" || row.dataset[s.dataset.filter] === s.value);
      row.hidden = !visible;
      shown += visible ? 1 : 0;
    }
    document.getElementById("shown").textContent = shown + " of " + rows.length + " cells shown";
  }
  for (const s of selects) {
    if (params.has(s.dataset.filter)) s.value = params.get(s.dataset.filter);
    s.addEventListener("change", apply);
  }
  let last = null, ascending = true;
  for (const th of table.querySelectorAll("th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      ascending = last === key ? !ascending : th.dataset.numeric !== "1";
      last = key;
      const value = r => th.dataset.numeric === "1" ? parseFloat(r.dataset[key]) : r.dataset[key];
      rows.sort((a, b) => (value(a) > value(b) ? 1 : value(a) < value(b) ? -1 : 0) * (ascending ? 1 : -1));
      for (const r of rows) body.appendChild(r);
    });
  }
  apply();
  // For the browser test and for readers: every image says whether it loaded.
  window.addEventListener("load", () => {
    for (const img of document.images) img.dataset.loaded = img.complete && img.naturalWidth > 0 ? "1" : "0";
    document.body.dataset.ready = "1";
  });
})();
