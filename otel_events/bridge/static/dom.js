// Building DOM nodes. Event content comes from agents, so text only ever goes in as
// text nodes (never innerHTML), and attributes only through setAttribute.

/**
 * h("span", {class: "x", "data-id": id}, child, ...): an element. Attributes whose value
 * is null, undefined or false are left out; children that are null, undefined or false
 * are skipped (never printed as "null"), strings and numbers become text.
 */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const key of Object.keys(attrs)) {
      const value = attrs[key];
      if (value == null || value === false) continue;
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Set an element's text if it changed (cheaper than always writing). */
export function setText(node, text) {
  const value = text == null ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Set or remove an attribute, touching the DOM only on a change. */
export function setAttr(node, name, value) {
  if (value == null || value === false) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else {
    const text = value === true ? "" : String(value);
    if (node.getAttribute(name) !== text) node.setAttribute(name, text);
  }
}

/** Set a CSS custom property through the CSSOM (allowed under a strict CSP). */
export function setVar(node, name, value) {
  const text = String(value);
  if (node.style.getPropertyValue(name) !== text) node.style.setProperty(name, text);
}
