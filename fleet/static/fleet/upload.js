// Uploads a form[data-upload] with XMLHttpRequest so the page can show the upload's progress (fetch
// cannot report request-body progress), then swaps the server's answer (an HTML fragment: the new
// release or the refusal) into [data-upload-result] and refreshes the list. Without this script the
// form is a plain multipart post and still works.
(function () {
  "use strict";

  function humanBytes(n) {
    var units = ["B", "KB", "MB", "GB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function bind(form) {
    var box = form.querySelector("[data-upload-progress]");
    var bar = box.querySelector("progress");
    var percent = box.querySelector("[data-upload-percent]");
    var bytes = box.querySelector("[data-upload-bytes]");
    var result = document.querySelector("[data-upload-result]");
    var button = form.querySelector("button[type=submit]");

    function show(loaded, total) {
      var value = total ? Math.round((100 * loaded) / total) : 0;
      bar.value = value;
      bar.setAttribute("value", String(value));
      percent.textContent = value + " %";
      bytes.textContent = humanBytes(loaded) + " of " + humanBytes(total);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = new FormData(form);
      var file = form.querySelector("input[type=file]").files[0];
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("HX-Request", "true"); // the server answers with the fragment
      xhr.setRequestHeader("X-CSRFToken", body.get("csrfmiddlewaretoken"));
      box.hidden = false;
      box.removeAttribute("data-done");
      show(0, file ? file.size : 0);
      result.innerHTML = "";
      button.disabled = true;
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) { show(e.loaded, e.total); }
      });
      // Every byte is sent: 100 %, even when the browser reported no intermediate progress (small files).
      xhr.upload.addEventListener("load", function () { show(1, 1); bytes.textContent = "sent; signing…"; });
      xhr.addEventListener("load", function () {
        button.disabled = false;
        result.innerHTML = xhr.responseText;
        box.setAttribute("data-done", xhr.status < 300 ? "ok" : "refused");
        if (xhr.status < 300) {
          bytes.textContent = "signed";
          form.reset();
          if (window.htmx && form.dataset.refresh) {
            window.htmx.ajax("GET", form.dataset.refresh, { target: form.dataset.refreshTarget, swap: "innerHTML" });
          }
        } else {
          bytes.textContent = "refused";
        }
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        box.setAttribute("data-done", "error");
        result.innerHTML = '<p class="message error">The upload failed: the connection was lost.</p>';
      });
      xhr.send(body);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-upload]").forEach(bind);
  });
})();
