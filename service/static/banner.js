// The page's one message banner, shared by the explorer, the walk-through and the token-pair view.
//
// Each message has a source; a view clears only its own message, so a walk-through that succeeds does not hide
// the explorer's error, and vice versa. #banner data-source names the source of the message shown.

const $ = (selector) => document.querySelector(selector);

export function showBanner(message, source = "explorer") {
  $("#banner-text").textContent = message;
  $("#banner").dataset.source = source;
  $("#banner").hidden = false;
}

/** Hide the banner if it shows `source`'s message (any message when `source` is null). */
export function clearBanner(source = null) {
  const banner = $("#banner");
  if (source !== null && banner.dataset.source !== source) return;
  banner.hidden = true;
  delete banner.dataset.source;
  $("#banner-text").textContent = "";
}
