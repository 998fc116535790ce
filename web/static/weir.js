// Progressive enhancement for the operator UI; every page works without it.
"use strict";

// Environment pages: refresh the node table while a promotion converges.
for (const box of document.querySelectorAll("[data-poll]")) {
  const url = box.dataset.poll;
  const untilSettled = box.dataset.pollUntilSettled === "true";
  let rounds = 0;
  const tick = async () => {
    rounds += 1;
    try {
      const response = await fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin" });
      if (response.ok) box.innerHTML = await response.text();
    } catch (_) { /* the next round retries */ }
    const status = box.querySelector(".convergence");
    const settled = status && (status.classList.contains("done") || status.classList.contains("failed"));
    // While watching a promotion: every second until settled (at most 2 minutes).
    // Otherwise: a calm refresh every 5 seconds.
    if (untilSettled && !settled && rounds < 120) setTimeout(tick, 1000);
    else if (!untilSettled || settled) setTimeout(tick, 5000);
  };
  setTimeout(tick, untilSettled ? 500 : 5000);
}

// Upload page: load a local file into the config text area.
for (const input of document.querySelectorAll("input[type=file][data-load-into]")) {
  input.closest("label").hidden = false;
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    document.getElementById(input.dataset.loadInto).value = await file.text();
    const format = document.querySelector("select[name=format]");
    if (format && /\.ya?ml$/i.test(file.name)) format.value = "yaml";
    else if (format && /\.toml$/i.test(file.name)) format.value = "toml";
    else if (format) format.value = "json";
  });
}

// Destructive forms ask first.
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// Shown-once secrets: a copy button.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.hidden = false;
  button.addEventListener("click", async () => {
    await navigator.clipboard.writeText(document.getElementById(button.dataset.copy).textContent);
    button.textContent = "Copied";
  });
}
