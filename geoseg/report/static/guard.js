/* geoseg report.html, first script of the page: note any fetch the page's Content-Security-Policy blocks.
 * The policy lets nothing load from anywhere (only what the page carries inline and data: URIs), so a
 * report never reaches the network; a blocked attempt is listed on <html data-blocked="..."> for checks. */
document.addEventListener("securitypolicyviolation", function (event) {
  var root = document.documentElement;
  var seen = root.getAttribute("data-blocked");
  root.setAttribute("data-blocked", (seen ? seen + " " : "") + (event.blockedURI || event.violatedDirective));
});
