// Renders the ```mermaid blocks (div.fsm-mermaid) with the vendored Mermaid, offline.
// Click a diagram to see it at its natural size (edge labels readable); click again,
// or press Escape, to close. Works for Mermaid diagrams and for the Graphviz SVG.
(function () {
  "use strict";
  var SELECTOR = ".fsm-mermaid, img.fsm-diagram, img[src$='lifecycle.svg']";

  function render() {
    if (typeof mermaid === "undefined" || !document.querySelector(".fsm-mermaid")) return;
    mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "default" });
    mermaid.run({ querySelector: ".fsm-mermaid" });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }

  function close() {
    var open = document.querySelector(".fsm-diagram-overlay");
    if (open) open.remove();
    return Boolean(open);
  }

  function naturalCopy(target) {
    if (target.tagName === "IMG") {
      var img = target.cloneNode();
      img.removeAttribute("width");
      img.style.width = (target.naturalWidth || 1600) + "px";
      return img;
    }
    var svg = target.querySelector("svg");
    if (!svg) return null;
    var copy = svg.cloneNode(true);
    var box = svg.viewBox && svg.viewBox.baseVal;
    copy.removeAttribute("style");
    if (box && box.width) {
      // Mermaid shrinks the diagram to the page (max-width); its own size reads well.
      copy.setAttribute("width", String(Math.round(box.width)));
      copy.setAttribute("height", String(Math.round(box.height)));
    }
    return copy;
  }

  document.addEventListener("click", function (event) {
    if (close()) return;
    var target = event.target.closest && event.target.closest(SELECTOR);
    if (!target) return;
    var copy = naturalCopy(target);
    if (!copy) return;
    var overlay = document.createElement("div");
    overlay.className = "fsm-diagram-overlay";
    overlay.setAttribute("role", "dialog");
    overlay.setAttribute("aria-label", "Diagram at full size; click or press Escape to close");
    overlay.appendChild(copy);
    document.body.appendChild(overlay);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") close();
  });
})();
