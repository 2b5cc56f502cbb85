/* Results page: sort a table by clicking a header, filter rows by text, family and model.
   Local and dependency-free (the site works offline). Numbers sort by their data-v attribute. */
(function () {
  "use strict";

  function cellKey(row, col) {
    var cell = row.cells[col];
    if (!cell) return { num: NaN, text: "" };
    var v = cell.getAttribute("data-v");
    return { num: v === null || v === "" ? NaN : parseFloat(v), text: cell.textContent.trim().toLowerCase() };
  }

  function sortBy(table, col, header) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", asc ? "ascending" : "descending");
    rows.sort(function (a, b) {
      var x = cellKey(a, col), y = cellKey(b, col);
      var xn = !isNaN(x.num), yn = !isNaN(y.num);
      var d;
      if (xn && yn) d = x.num - y.num;
      else if (xn !== yn) return xn ? -1 : 1;  /* empty cells last, whatever the direction */
      else d = x.text < y.text ? -1 : x.text > y.text ? 1 : 0;
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function applyFilter(box) {
    var table = box.querySelector("table");
    var text = box.querySelector(".atlas-filter").value.trim().toLowerCase();
    var family = box.querySelector(".atlas-family").value;
    var model = box.querySelector(".atlas-model").value;
    var words = text ? text.split(/\s+/) : [];
    var shown = 0, rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i], content = row.textContent.toLowerCase();
      var ok = (!family || row.getAttribute("data-family") === family) &&
               (!model || row.getAttribute("data-model") === model) &&
               words.every(function (w) { return content.indexOf(w) >= 0; });
      row.hidden = !ok;
      if (ok) shown++;
    }
    box.querySelector(".atlas-count").textContent = shown + " of " + rows.length + " runs";
  }

  function setup() {
    document.querySelectorAll(".atlas-results").forEach(function (box) {
      if (box.getAttribute("data-ready")) return;
      box.setAttribute("data-ready", "1");
      var table = box.querySelector("table");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
        th.tabIndex = 0;
        th.addEventListener("click", function () { sortBy(table, col, th); });
        th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortBy(table, col, th); });
      });
      ["input", "change"].forEach(function (ev) {
        box.querySelector(".atlas-results-controls").addEventListener(ev, function () { applyFilter(box); });
      });
    });
  }

  if (typeof document$ !== "undefined") document$.subscribe(setup);  /* mkdocs-material instant loading */
  else if (document.readyState !== "loading") setup();
  else document.addEventListener("DOMContentLoaded", setup);
})();
