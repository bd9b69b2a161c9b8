CREATE TABLE IF NOT EXISTS "tags" (
  "id" TEXT NOT NULL PRIMARY KEY,
  "name" TEXT NOT NULL DEFAULT '',
  "color" TEXT
) STRICT;

CREATE TABLE IF NOT EXISTS "_synced_clock.tags" (
  "id" TEXT,
  _synced_cl INTEGER,
  _synced_dv INTEGER,
  _synced_created INTEGER,
  "name.v" INTEGER,
  "name.dv" INTEGER,
  "color.v" INTEGER,
  "color.dv" INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS "_synced_clock.tags.key" ON "_synced_clock.tags" ("id");
CREATE INDEX IF NOT EXISTS "_synced_clock.tags.dv" ON "_synced_clock.tags" (_synced_dv);

CREATE TRIGGER IF NOT EXISTS "_synced_trigger.tags.insert" AFTER INSERT ON "tags" BEGIN
  INSERT INTO "_synced_clock.tags" ("id", _synced_cl, _synced_dv, _synced_created, "name.v", "name.dv", "color.v", "color.dv") SELECT NEW."id", 1, _synced_state.db_version + 1, _synced_state.db_version + 1, 1, _synced_state.db_version + 1, 1, _synced_state.db_version + 1 FROM _synced_state WHERE _synced_state.applying = 0 ON CONFLICT ("id") DO UPDATE SET _synced_cl = _synced_cl + 1 - _synced_cl % 2, _synced_dv = excluded._synced_dv, _synced_created = CASE WHEN _synced_cl % 2 = 0 THEN excluded._synced_dv ELSE _synced_created END, "name.v" = CASE WHEN _synced_cl % 2 = 0 THEN 1 ELSE "name.v" + 1 END, "name.dv" = excluded._synced_dv, "color.v" = CASE WHEN _synced_cl % 2 = 0 THEN 1 ELSE "color.v" + 1 END, "color.dv" = excluded._synced_dv;
END;
CREATE TRIGGER IF NOT EXISTS "_synced_trigger.tags.update" AFTER UPDATE ON "tags" WHEN (SELECT applying FROM _synced_state) = 0 AND NOT (OLD."id" IS NOT NEW."id") AND (OLD."name" IS NOT NEW."name" OR OLD."color" IS NOT NEW."color") BEGIN
  UPDATE "_synced_clock.tags" SET "name.v" = "name.v" + (OLD."name" IS NOT NEW."name"), "color.v" = "color.v" + (OLD."color" IS NOT NEW."color"), ("name.dv", "color.dv", _synced_dv) = (SELECT CASE WHEN OLD."name" IS NOT NEW."name" THEN _synced_state.db_version + 1 ELSE "name.dv" END, CASE WHEN OLD."color" IS NOT NEW."color" THEN _synced_state.db_version + 1 ELSE "color.dv" END, _synced_state.db_version + 1 FROM _synced_state) WHERE "id" = NEW."id";
END;
CREATE TRIGGER IF NOT EXISTS "_synced_trigger.tags.rekey" AFTER UPDATE ON "tags" WHEN (SELECT applying FROM _synced_state) = 0 AND (OLD."id" IS NOT NEW."id") BEGIN
  UPDATE "_synced_clock.tags" SET _synced_cl = _synced_cl + 1, _synced_dv = (SELECT _synced_state.db_version + 1 FROM _synced_state) WHERE "id" = OLD."id" AND _synced_cl % 2 = 1;
  INSERT INTO "_synced_clock.tags" ("id", _synced_cl, _synced_dv, _synced_created, "name.v", "name.dv", "color.v", "color.dv") SELECT NEW."id", 1, _synced_state.db_version + 1, _synced_state.db_version + 1, 1, _synced_state.db_version + 1, 1, _synced_state.db_version + 1 FROM _synced_state WHERE _synced_state.applying = 0 ON CONFLICT ("id") DO UPDATE SET _synced_cl = _synced_cl + 1 - _synced_cl % 2, _synced_dv = excluded._synced_dv, _synced_created = CASE WHEN _synced_cl % 2 = 0 THEN excluded._synced_dv ELSE _synced_created END, "name.v" = CASE WHEN _synced_cl % 2 = 0 THEN 1 ELSE "name.v" + 1 END, "name.dv" = excluded._synced_dv, "color.v" = CASE WHEN _synced_cl % 2 = 0 THEN 1 ELSE "color.v" + 1 END, "color.dv" = excluded._synced_dv;
END;
CREATE TRIGGER IF NOT EXISTS "_synced_trigger.tags.delete" AFTER DELETE ON "tags" WHEN (SELECT applying FROM _synced_state) = 0 BEGIN
  UPDATE "_synced_clock.tags" SET _synced_cl = _synced_cl + 1, _synced_dv = (SELECT _synced_state.db_version + 1 FROM _synced_state) WHERE "id" = OLD."id" AND _synced_cl % 2 = 1;
END;
