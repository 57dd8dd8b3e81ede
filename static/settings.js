// Scout's settings page: add and delete extra-contact rows, keep the thresholds in the
// chosen units, and show alert times in the reader's own time zone.
// Data comes from the server only through the JSON block #page-data (rendered with tojson).
"use strict";

(function () {
  var data = JSON.parse(document.getElementById("page-data").textContent);
  var rows = document.getElementById("contact-rows");
  var template = document.getElementById("contact-row-template");
  var addButton = document.getElementById("add-contact");
  var message = document.getElementById("extra_contacts-error");

  function contactRows() {
    return rows.querySelectorAll("[data-contact-row]");
  }

  function showMessage(text) {
    message.textContent = text;
    message.classList.toggle("hide", !text);
  }

  // Ids, labels and button names follow the row's position, so every field keeps a label.
  function renumber() {
    contactRows().forEach(function (row, index) {
      var n = index + 1;
      var phone = row.querySelector("input[name=extra_contacts]");
      var channel = row.querySelector("select[name=extra_channels]");
      var name = row.querySelector("input[name=extra_names]");
      name.id = "extra-name-" + n;
      row.querySelector("[data-label=name]").htmlFor = name.id;
      row.querySelector("[data-label=name]").textContent = "Contact " + n + " name";
      phone.id = "extra-phone-" + n;
      channel.id = "extra-channel-" + n;
      row.querySelector("[data-label=phone]").htmlFor = phone.id;
      row.querySelector("[data-label=phone]").textContent = "Contact " + n + " phone";
      row.querySelector("[data-label=channel]").htmlFor = channel.id;
      var mode = row.querySelector("select[name=extra_modes]");
      mode.id = "extra-mode-" + n;
      row.querySelector("[data-label=mode]").htmlFor = mode.id;
      row.querySelector("[data-label=mode]").textContent = "Contact " + n + ": if you do not answer";
      row.querySelector("[data-remove-contact]").setAttribute("aria-label", "Delete contact " + n);
    });
  }

  function addContact() {
    if (contactRows().length >= data.maxContacts) {
      showMessage("Scout texts at most " + data.maxContacts + " extra contacts. Delete one to add another.");
      return;
    }
    showMessage("");
    rows.appendChild(template.content.cloneNode(true));
    renumber();
    var added = contactRows();
    added[added.length - 1].querySelector("input[name=extra_contacts]").focus();
  }

  addButton.addEventListener("click", addContact);

  // Deleting removes exactly the row whose button was pressed.
  rows.addEventListener("click", function (event) {
    var button = event.target.closest("[data-remove-contact]");
    if (!button) return;
    button.closest("[data-contact-row]").remove();
    showMessage("");
    renumber();
  });

  // Thresholds are typed in the chosen units: switching units converts what is there.
  var units = document.getElementById("units");
  var previousUnits = units.value;
  function convert(value, from, to) {
    var number = parseFloat(String(value).replace(",", "."));
    if (!isFinite(number) || from === to) return value;
    if (to === "mmol/L") return (Math.round((number / data.mgdlPerMmol) * 10) / 10).toFixed(1);
    return String(Math.round(number * data.mgdlPerMmol));
  }
  units.addEventListener("change", function () {
    ["low", "high", "urgent_low", "night_low", "night_high", "urgent_high"].forEach(function (name) {
      var input = document.getElementById(name);
      var wasDefault = parseFloat(input.value) === data.defaults[previousUnits][name];
      input.value = wasDefault ? String(data.defaults[units.value][name]) : convert(input.value, previousUnits, units.value);
    });
    document.querySelectorAll(".unit-name").forEach(function (span) { span.textContent = units.value; });
    previousUnits = units.value;
  });

  // The night window is read on the clocks of the chosen zone: when this browser's clocks are
  // in another zone Scout knows, say so and offer it (never chosen without the person's click).
  var zoneSelect = document.getElementById("time_zone");
  var zoneHint = document.getElementById("browser-zone");
  var browserZone = "";
  try { browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { browserZone = ""; }
  var known = Array.prototype.some.call(zoneSelect.options, function (option) { return option.value === browserZone; });
  if (browserZone && known && browserZone !== zoneSelect.value) {
    document.getElementById("browser-zone-text").textContent = "This device's clocks are set to " + browserZone + ".";
    var useZone = document.getElementById("use-browser-zone");
    useZone.textContent = "Use " + browserZone;
    zoneHint.classList.remove("hide");
    useZone.addEventListener("click", function () {
      zoneSelect.value = browserZone;
      zoneHint.classList.add("hide");
      zoneSelect.focus();
    });
  }

  // After a refused save, the first field to correct gets the focus (and is scrolled to).
  var firstInvalid = document.querySelector("#settings [aria-invalid=true]");
  if (firstInvalid) {
    firstInvalid.focus();
  } else if (document.getElementById("check-result")) {
    document.getElementById("check-result").focus();
  }
})();
