// Loads Google Identity Services for the sign-in page. Google's script renders the
// button from the data attributes of #g_id_onload and .g_id_signin and posts the ID token
// to our /login. This script sizes the button to the screen (a phone is narrower than
// Google's default) and says so plainly if Google's script cannot load.
"use strict";

(function () {
  var button = document.getElementById("google-signin");
  var failed = document.getElementById("google-signin-failed");
  if (!button) return;
  button.setAttribute("data-width", String(Math.min(400, Math.max(200, button.clientWidth))));

  function showFailure() {
    failed.classList.remove("hide");
  }

  var script = document.createElement("script");
  script.src = "https://accounts.google.com/gsi/client";
  script.async = true;
  script.addEventListener("error", showFailure);
  // The button is an iframe: if none appeared after a while, something blocked it.
  script.addEventListener("load", function () {
    window.setTimeout(function () {
      if (!button.querySelector("iframe")) showFailure();
    }, 8000);
  });
  document.head.appendChild(script);
})();
