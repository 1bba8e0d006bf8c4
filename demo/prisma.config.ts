// Prisma 7 configuration of the demo application, shaped like the real application's: the schema and the
// migrations are found from here, and the database URL lives here, not in schema.prisma.
import "dotenv/config";
import { defineConfig, env } from "prisma/config";

export default defineConfig({
  schema: "prisma/schema.prisma",
  migrations: {
    path: "prisma/migrations",
  },
  datasource: {
    url: env("DATABASE_URL"),
  },
});
