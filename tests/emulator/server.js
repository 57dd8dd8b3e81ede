// Starts the Firestore-protocol server Scout's tests run against: node server.js PORT
// (@firestore-emulator/server keeps everything in memory; it stops with this process).
const { FirestoreServer } = require("@firestore-emulator/server");

const port = Number(process.argv[2] || process.env.PORT || 8080);
const server = new FirestoreServer();
server.start(port).then(
  () => console.log(`firestore emulator listening on 127.0.0.1:${port}`),
  (error) => { console.error(`firestore emulator could not start on port ${port}: ${error}`); process.exit(1); },
);
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => { server.stop(); process.exit(0); });
