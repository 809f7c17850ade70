// vibe-assets web: selection (click, shift-click) on the curation grid, group selection on the
// duplicates page, a drop zone for uploads. Everything works without it, with plain checkboxes.
(function () {
  "use strict";
  function onReady(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }
  onReady(function () {
    var back = document.querySelector("[data-back]");
    if (back) back.addEventListener("click", function (e) { if (history.length > 1) { e.preventDefault(); history.back(); } });

    var grid = document.querySelector(".grid.selectable");
    if (grid) {
      var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
      var count = document.getElementById("count");
      var last = null;
      var sync = function () {
        var n = 0;
        cards.forEach(function (c) {
          var box = c.querySelector(".pick");
          c.classList.toggle("selected", box.checked);
          if (box.checked) n++;
        });
        if (count) count.textContent = n + " selected";
      };
      cards.forEach(function (card, i) {
        var box = card.querySelector(".pick");
        card.addEventListener("click", function (e) {
          if (e.target.closest("a.like") || e.ctrlKey || e.metaKey) return;
          var direct = e.target === box;  // the checkbox toggled itself already
          if (!direct) e.preventDefault();
          var on = direct ? box.checked : !box.checked;
          if (e.shiftKey && last !== null) {
            var lo = Math.min(last, i), hi = Math.max(last, i);
            for (var k = lo; k <= hi; k++) cards[k].querySelector(".pick").checked = on;
          } else {
            box.checked = on;
          }
          last = i;
          sync();
        });
      });
      document.querySelectorAll("[data-select]").forEach(function (b) {
        b.addEventListener("click", function () {
          var on = b.getAttribute("data-select") === "all";
          cards.forEach(function (c) { c.querySelector(".pick").checked = on; });
          sync();
        });
      });
      sync();
    }

    document.querySelectorAll("[data-groups]").forEach(function (b) {
      b.addEventListener("click", function () {
        document.querySelectorAll("input.gpick").forEach(function (x) { x.checked = true; });
      });
    });

    var drop = document.querySelector(".upload .drop");
    if (drop) {
      var input = drop.querySelector("input[type=file]");
      ["dragenter", "dragover"].forEach(function (t) {
        drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); });
      });
      ["dragleave", "drop"].forEach(function (t) {
        drop.addEventListener(t, function () { drop.classList.remove("over"); });
      });
      drop.addEventListener("drop", function (e) {
        e.preventDefault();
        if (e.dataTransfer && e.dataTransfer.files.length) input.files = e.dataTransfer.files;
      });
    }
  });
})();
