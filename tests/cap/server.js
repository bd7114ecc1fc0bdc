// Starts the CAP server of tests/cap on 127.0.0.1 only (cds.server alone listens on
// every interface), with the model deployed to an in-memory SQLite database.
// Usage: PORT=N node server.js; CDS_CONFIG='{"query":{"limit":{"max":5}}}' sets paging.
const cds = require('@sap/cds')
const express = require('express')

const app = express()
const listen = app.listen.bind(app)
app.listen = (port, ...rest) => listen(port, '127.0.0.1', ...rest)

const port = Number(process.env.PORT || 4004)
cds.server({ app, port, in_memory: true }).then(server => {
  server.on('listening', () => console.log(`listening on http://127.0.0.1:${server.address().port}`))
}, error => {
  console.error(error)
  process.exit(1)
})
