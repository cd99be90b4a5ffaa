// The /docs page: Swagger UI rendering this origin's /openapi.json. Served as a file, not
// inline, so that the page's Content-Security-Policy needs no 'unsafe-inline'.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // Without this, Swagger UI sends the document's URL to validator.swagger.io for a badge.
  validatorUrl: null,
});
