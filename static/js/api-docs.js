// Starts Swagger UI on /docs. A file rather than an inline script, so the page works under the app's
// Content-Security-Policy (script-src 'self').
const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapi,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  deepLinking: true,
  showCommonExtensions: true, // parameter limits (top_k's maximum is the model's class count)
  validatorUrl: null, // the default sends the schema to a public validator
});
