// Run once by the mongo image on its first start (empty data volume), as the root user: the
// workers' user, who may read and write flow8's database and nothing else.
const user = process.env.FLOW8_MONGO_USERNAME;
const pwd = process.env.FLOW8_MONGO_PASSWORD;
const database = process.env.FLOW8_MONGO_DATABASE || "flow8";
if (!user || !pwd) {
  throw new Error("FLOW8_MONGO_USERNAME and FLOW8_MONGO_PASSWORD must be set (compose/.env)");
}
db.getSiblingDB("admin").createUser({ user, pwd, roles: [{ role: "readWrite", db: database }] });
