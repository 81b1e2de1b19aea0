// Sign in with a login link (#code=… in the address) or a pasted token.
import { consolePost, h, main, status } from "./common.js";

const params = new URLSearchParams(location.search);
const next = params.get("next");
// Only a path on this hub: never send a person off-site after signing in.
const target = next && next.startsWith("/console") && !next.startsWith("//") ? next : "/console";
const code = new URLSearchParams(location.hash.slice(1)).get("code");
// The code is single-use; keep it out of the history and the address bar either way.
history.replaceState(null, "", location.pathname + location.search);

async function signIn(body) {
  await consolePost("/console/login", body);
  location.assign(target);
}

function form() {
  const input = h("textarea", {
    id: "token", name: "token", rows: 3, cols: 60, required: true, autocomplete: "off",
    spellcheck: "false", "aria-describedby": "token-help",
  });
  const message = h("p", { id: "sign-in-error", role: "alert", class: "error" });
  const submit = async (event) => {
    event.preventDefault();
    message.textContent = "";
    try {
      await signIn({ token: input.value.trim() });
    } catch (error) {
      message.textContent = `Could not sign in: ${error.message}`;
    }
  };
  return h("form", { id: "sign-in", onsubmit: submit },
    h("label", { for: "token" }, "Your access token"),
    h("p", { id: "token-help", class: "hint" },
      "Paste the token your administrator gave you, or open the sign-in link printed by ",
      h("code", {}, "hub token create --role therapist --login"), "."),
    input, h("p", {}, h("button", { type: "submit" }, "Sign in")), message);
}

async function start() {
  if (code) {
    status("Signing in…");
    try {
      await signIn({ code });
      return;
    } catch (error) {
      status(`This sign-in link did not work: ${error.message}`);
    }
  } else {
    status("");
  }
  main().append(form());
  document.getElementById("token").focus();
}

start();
