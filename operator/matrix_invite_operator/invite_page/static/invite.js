// The invite page's only script. It reads the token from the URL's fragment, which the browser
// never sends to any server, shows it, and copies it on request. It makes no network request.
"use strict";

(function () {
  var main = document.getElementById("invite");
  var raw = window.location.hash.slice(1);
  var token = "";
  try {
    token = decodeURIComponent(raw).trim();
  } catch (e) {
    token = raw.trim();
  }

  // Language links keep the fragment, so switching language keeps the token.
  var links = document.querySelectorAll("a.keep-fragment");
  for (var i = 0; i < links.length; i++) {
    if (raw) {
      links[i].setAttribute("href", links[i].getAttribute("href") + "#" + raw);
    }
  }

  if (!token) {
    document.getElementById("no-token").hidden = false;
    return;
  }

  var field = document.getElementById("token");
  var status = document.getElementById("copy-status");
  field.value = token;
  document.getElementById("token-section").hidden = false;
  field.addEventListener("focus", function () {
    field.select();
  });

  if (main.dataset.prefill === "true") {
    // Only MAS releases that pre-fill tokens get it (the server's version check); the token
    // then goes to MAS, its destination, and to no one else.
    var button = document.getElementById("continue");
    var target = new URL(button.getAttribute("href"));
    target.searchParams.set("token", token);
    button.setAttribute("href", target.toString());
    var note = document.getElementById("prefill-note");
    if (note) {
      note.hidden = false;
    }
  }

  function copiedWith(legacy) {
    if (legacy) {
      field.focus();
      field.select();
      var done = false;
      try {
        done = document.execCommand("copy");
      } catch (e) {
        done = false;
      }
      status.textContent = done ? main.dataset.copied : main.dataset.copyFailed;
      return;
    }
    status.textContent = main.dataset.copied;
  }

  document.getElementById("copy").addEventListener("click", function () {
    status.textContent = "";
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(token).then(
        function () {
          copiedWith(false);
        },
        function () {
          copiedWith(true);
        }
      );
    } else {
      copiedWith(true);
    }
  });
})();
