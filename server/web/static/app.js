// The only script on the pages: "select all" boxes over a table's checkboxes, and
// "Go back" links. Everything works without it (tick boxes one by one).
"use strict";
document.addEventListener("change", (event) => {
  const all = event.target.closest("[data-select-all]");
  if (!all) return;
  const table = document.getElementById(all.dataset.selectAll);
  if (!table) return;
  for (const box of table.querySelectorAll("tbody input[type=checkbox]")) {
    box.checked = all.checked;
  }
});
document.addEventListener("click", (event) => {
  const back = event.target.closest("[data-back]");
  if (back && window.history.length > 1) {
    event.preventDefault();
    window.history.back();
  }
});
