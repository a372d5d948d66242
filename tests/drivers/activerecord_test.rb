# ActiveRecord 6.1 (postgresql adapter on ruby-pg) through pgsplit: an ActiveRecord::Migration (table, unique
# index, and a view that tells which server read it) run up on the primary and down at the end; model writes on
# the primary; autocommit model reads on both replicas; read-your-writes; a `requires_new` savepoint rolled back
# with ActiveRecord::Rollback; a read-only transaction on a replica; AR's server-side prepared statements (seen in
# the statement pool and the sql.active_record log) on both replicas and then in a transaction on the primary; a
# 1 MB parameter; an error in a transaction (25P02), rollback and recovery. The same reads and prepared-statement
# checks again with prepared_statements: false, and raw ruby-pg (exec_params, prepare/exec_prepared, 1 MB).
#
# Env: DATABASE_URL (pgsplit), PRIMARY_PORT, REPLICA_PORTS (comma-separated). Prints `OK activerecord_test.rb`.

require "active_record"
require "digest"
require "pg"

NAME = "activerecord_test.rb"
URL = ENV.fetch("DATABASE_URL")
PRIMARY = Integer(ENV.fetch("PRIMARY_PORT"))
REPLICAS = ENV.fetch("REPLICA_PORTS").split(",").map { |p| Integer(p) }.sort
TABLE = "drv_activerecord_#{Process.pid}"
VIEW = "#{TABLE}_located"
BIG = "x" * (1 << 20)
CONFIG = { adapter: "postgresql", url: URL, connect_timeout: 10 }.freeze

class Failed < StandardError; end

def expect(cond, what)
  raise Failed, what unless cond
end

# Runs one named step; any failure in it prints the step's name and exits 1 (ensure blocks still run).
def step(what)
  yield
rescue StandardError => e
  $stderr.puts e.full_message unless e.is_a?(Failed)
  $stderr.puts "#{NAME}: FAILED: #{what}: #{e.class}: #{e.message}"
  exit 1
end

# The sql.active_record events: [sql, statement_name, connection] of every statement AR sends.
LOG = []
ActiveSupport::Notifications.subscribe("sql.active_record") do |*, payload|
  LOG << [payload[:sql], payload[:statement_name], payload[:connection]]
end

def logged
  LOG.clear
  yield
  LOG.dup
end

def sqlstate(error)
  pg = error.is_a?(PG::Error) ? error : error.cause
  pg.is_a?(PG::Error) && pg.result ? pg.result.error_field(PG::PG_DIAG_SQLSTATE) : nil
end

# Calls the block (a read returning the port it ran on) at least `min` times, and on until both replicas have
# answered (for at most 5 s). Right after the client's own write pgsplit sends its reads only to replicas known to
# have replayed it, so the second replica may join only at its next monitor probe. Returns how many reads ran.
def reach_both_replicas(min, what)
  seen = []
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
  while seen.size < min ||
        (seen.uniq.size < REPLICAS.size && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline)
    seen << yield(seen.size)
  end
  expect(seen.uniq.sort == REPLICAS, "#{seen.size} #{what} should reach both replicas #{REPLICAS}; saw #{seen.uniq}")
  seen.size
end

def on_replica(row, what)
  expect(row.in_recovery == true && REPLICAS.include?(row.read_on),
         "#{what}: should run on a replica #{REPLICAS}; got in_recovery=#{row.in_recovery} port=#{row.read_on}")
  row.read_on
end

def on_primary(row, what)
  expect(row.in_recovery == false && row.read_on == PRIMARY,
         "#{what}: should run on the primary #{PRIMARY}; got in_recovery=#{row.in_recovery} port=#{row.read_on}")
end

class CreateItems < ActiveRecord::Migration[6.1]
  def up
    create_table TABLE do |t|
      t.string :name, null: false
      t.integer :v, null: false, default: 0
      t.text :body
      t.integer :written_on, default: -> { "inet_server_port()" } # the server that ran the INSERT
    end
    add_index TABLE, :name, unique: true
    execute <<~SQL
      CREATE VIEW #{VIEW} AS
        SELECT id, name, v, body, written_on, pg_is_in_recovery() AS in_recovery, inet_server_port() AS read_on
        FROM #{TABLE}
    SQL
  end

  def down
    execute "DROP VIEW #{VIEW}"
    drop_table TABLE
  end
end

class Item < ActiveRecord::Base
  self.table_name = TABLE
end

# The rows of Item, with the server that read them.
class Located < ActiveRecord::Base
  self.table_name = VIEW
  self.primary_key = "id"
end

# The same two models on a second pool with prepared_statements: false.
class Unprepared < ActiveRecord::Base
  self.abstract_class = true
end

class UnpreparedItem < Unprepared
  self.table_name = TABLE
end

class UnpreparedLocated < Unprepared
  self.table_name = VIEW
  self.primary_key = "id"
end

def main
  Thread.new do # a hang fails the test instead of blocking it
    sleep 240
    $stderr.puts "#{NAME}: FAILED: timed out (a hang)"
    exit! 1
  end
  ActiveRecord::Migration.verbose = false
  ActiveRecord::Base.establish_connection(CONFIG)
  Unprepared.establish_connection(CONFIG.merge(prepared_statements: false))
  conn = ActiveRecord::Base.connection

  step("ActiveRecord::Migration up: create_table, add_index, a view") do
    expect(conn.prepared_statements == true, "the postgresql adapter prepares statements by default")
    sql = logged { CreateItems.new.migrate(:up) }.map(&:first)
    expect(sql.any? { |s| s.start_with?(%(CREATE TABLE "#{TABLE}")) } &&
           sql.any? { |s| s.start_with?(%(CREATE UNIQUE INDEX)) }, "the migration's DDL: #{sql}")
    row = conn.select_rows("/* pgsplit:primary */ SELECT to_regclass('#{TABLE}') IS NOT NULL, " \
                           "to_regclass('#{VIEW}') IS NOT NULL, inet_server_port()")
    expect(row == [[true, true, PRIMARY]], "table and view on the primary: #{row}")
    expect(conn.index_exists?(TABLE, :name, unique: true), "the unique index, read back by the adapter")
  end
  begin
    run(conn)
    unprepared
    raw_pg
  ensure
    step("ActiveRecord::Migration down") do
      CreateItems.new.migrate(:down)
      gone = conn.select_value("/* pgsplit:primary */ SELECT to_regclass('#{TABLE}') IS NULL AND " \
                               "to_regclass('#{VIEW}') IS NULL")
      expect(gone == true, "table #{TABLE} and view #{VIEW} should be dropped")
    end
    ActiveRecord::Base.connection_handler.clear_all_connections!
  end
  puts "OK #{NAME}"
end

def run(conn)
  first = nil
  step("model writes run on the primary") do
    first = Item.create!(name: "first", v: 1)
    expect(first.reload.written_on == PRIMARY, "INSERT by create! ran on #{first.written_on}, not the primary")
    first.update!(v: 2)
    n = Item.where(id: first.id).update_all("v = v + 10, written_on = inet_server_port()")
    expect(n == 1, "update_all updated #{n} rows")
    first.reload
    expect([first.v, first.written_on] == [12, PRIMARY], "after update!/update_all: v=#{first.v} on #{first.written_on}")
  end

  step("autocommit model reads go to replicas") do
    reach_both_replicas(40, "autocommit reads") do |i|
      row = Located.find_by(name: "first")
      expect(row && row.v == 12, "read #{i}: #{row.inspect}")
      on_replica(row, "autocommit read #{i}")
    end
  end

  step("read-your-writes: create!/update! then read at once, 20 rounds") do
    20.times do |i|
      item = Item.create!(name: "ryw #{i}", v: i)
      row = Located.find_by(id: item.id)
      expect(row && [row.name, row.v, row.written_on] == ["ryw #{i}", i, PRIMARY], "read after create! #{i}: #{row.inspect}")
      item.update!(v: i + 100)
      v = Located.find(item.id).v
      expect(v == i + 100, "read after update! #{i}: v=#{v}")
    end
    expect(Item.where("name LIKE 'ryw %'").count == 20, "20 rows written")
  end

  step("transaction with a requires_new savepoint rolled back by ActiveRecord::Rollback") do
    sql = logged do
      Item.transaction do
        Item.create!(name: "outer", v: 20)
        Item.transaction(requires_new: true) do
          Item.create!(name: "inner", v: 30)
          expect(Item.where(name: "inner").exists?, "inner row visible inside the savepoint")
          raise ActiveRecord::Rollback
        end
        expect(!Item.where(name: "inner").exists?, "inner row gone after the savepoint's rollback")
        Item.create!(name: "after savepoint", v: 40)
        on_primary(Located.find(first.id), "a read in the transaction after the savepoint's rollback")
      end
    end.map(&:first)
    expect(sql.include?("SAVEPOINT active_record_1") && sql.include?("ROLLBACK TO SAVEPOINT active_record_1") &&
           sql.last == "COMMIT", "the savepoint statements AR sent: #{sql}")
    names = Item.where(name: ["outer", "inner", "after savepoint"]).order(:name).pluck(:name)
    expect(names == ["after savepoint", "outer"], "after the transaction: #{names}")
  end

  step("read-only transaction (SET TRANSACTION READ ONLY first) on a replica; a write fails with 25006") do
    code = nil
    Item.transaction do
      conn.execute("SET TRANSACTION READ ONLY")
      on_replica(Located.find(first.id), "first read of the read-only transaction")
      expect(Item.count == 23, "the read-only transaction counts 23 rows, got #{Item.count}")
      on_replica(Located.find(first.id), "later read of the read-only transaction")
      begin
        Item.where(id: first.id).update_all(v: 0)
      rescue ActiveRecord::StatementInvalid => e
        code = sqlstate(e)
      end
      raise ActiveRecord::Rollback
    end
    expect(code == "25006", "a write in the read-only transaction: SQLSTATE #{code.inspect}, want 25006")
    expect(Located.find(first.id).v == 12, "the refused write changed nothing")
  end

  step("server-side prepared statements: autocommit on both replicas, then in a transaction on the primary") do
    pool = conn.instance_variable_get(:@statements)
    reads = 0
    events = logged do
      reads = reach_both_replicas(30, "prepared autocommit reads") do |i|
        row = Located.find(first.id)
        expect([row.name, row.v] == ["first", 12], "prepared read #{i}: #{row.inspect}")
        on_replica(row, "prepared autocommit read #{i}")
      end
      Item.transaction do
        10.times do |i|
          on_primary(Located.find(first.id), "prepared read #{i} in a transaction")
          Item.where(id: first.id).update_all("v = v + 1")
        end
      end
    end
    names = events.select { |sql, _, c| c == conn && sql.include?(%(FROM "#{VIEW}")) }.map { |e| e[1] }
    expect(names.size == reads + 10 && names.uniq.size == 1 && names.first =~ /\Aa\d+\z/,
           "the #{reads + 10} finds should use one prepared statement; statement names #{names.uniq}")
    expect(pool.to_a.any? { |key, stmt| stmt == names.first && key.include?(%(FROM "#{VIEW}")) },
           "the adapter's statement pool holds #{names.first}: #{pool.to_a}")
    v = Item.find(first.id).v
    expect(v == 22, "10 updates in the transaction: v should be 22, got #{v}")
  end

  step("a 1 MB parameter") do
    item = Item.create!(name: "big", body: BIG)
    row = Located.find(item.id)
    expect(row.body == BIG, "1 MB body read back: length #{row.body&.length}")
    expect(Item.where(body: BIG).count == 1, "a 1 MB bind in a where clause finds the row")
    md5 = Item.where(id: item.id).pick(Arel.sql("md5(body)"))
    expect(md5 == Digest::MD5.hexdigest(BIG), "md5 of the stored body: #{md5}")
  end

  step("an error in ActiveRecord::Base.connection.transaction: 25P02 next, rollback, recovery") do
    dup = failed = nil
    begin
      ActiveRecord::Base.connection.transaction do
        Item.create!(name: "doomed", v: 50)
        begin
          Item.create!(name: "first") # the unique index refuses it
        rescue ActiveRecord::RecordNotUnique => e
          dup = sqlstate(e)
        end
        Item.count # in the failed transaction
      end
    rescue ActiveRecord::StatementInvalid => e
      failed = sqlstate(e)
    end
    expect(dup == "23505", "duplicate name: SQLSTATE #{dup.inspect}, want 23505")
    expect(failed == "25P02", "the statement after the error: SQLSTATE #{failed.inspect}, want 25P02")
    expect(!conn.transaction_open?, "AR rolled the transaction back")
    expect(Located.find_by(name: "doomed").nil?, "the row created before the error was rolled back")
    on_replica(Located.find(first.id), "a read after the recovery")
    after = Item.create!(name: "after error", v: 60)
    expect(after.reload.written_on == PRIMARY, "a write after the recovery ran on #{after.written_on}")
  end
end

def unprepared
  conn = Unprepared.connection
  step("prepared_statements: false: autocommit reads on replicas") do
    expect(conn != ActiveRecord::Base.connection && conn.prepared_statements == false,
           "the second pool does not prepare statements")
    reach_both_replicas(40, "unprepared autocommit reads") do |i|
      row = UnpreparedLocated.find_by(name: "first")
      expect(row && row.v == 22, "unprepared read #{i}: #{row.inspect}")
      on_replica(row, "unprepared autocommit read #{i}")
    end
  end

  step("prepared_statements: false: read-your-writes, 20 rounds") do
    20.times do |i|
      item = UnpreparedItem.create!(name: "unprepared #{i}", v: i)
      row = UnpreparedLocated.find_by(id: item.id)
      expect(row && [row.name, row.v, row.written_on] == ["unprepared #{i}", i, PRIMARY],
             "unprepared read after create! #{i}: #{row.inspect}")
    end
  end

  step("prepared_statements: false: one query with binds many times, then in a transaction") do
    first = UnpreparedItem.find_by!(name: "first")
    reads = 0
    events = logged do
      reads = reach_both_replicas(30, "unprepared autocommit finds") do |i|
        row = UnpreparedLocated.find(first.id)
        expect([row.name, row.v] == ["first", 22], "unprepared find #{i}: #{row.inspect}")
        on_replica(row, "unprepared autocommit find #{i}")
      end
      Unprepared.transaction do
        on_primary(UnpreparedLocated.find(first.id), "unprepared find in a transaction")
      end
    end
    finds = events.select { |sql, _, c| c == conn && sql.include?(%(FROM "#{VIEW}")) }
    expect(finds.size == reads + 1 && finds.all? { |_, name, _| name.nil? }, "unprepared finds use no statement name")
    expect(conn.instance_variable_get(:@statements).to_a.empty?, "the unprepared pool's statement cache is empty")
  end
end

def raw_pg
  pg = nil
  step("ruby-pg: connect") { pg = PG.connect(URL, connect_timeout: 10) }
  where = "SELECT $1::int AS v, pg_is_in_recovery() AS r, inet_server_port() AS p"
  replica = lambda do |res, i, what|
    row = res[0]
    expect(row["v"] == i.to_s && row["r"] == "t" && REPLICAS.include?(Integer(row["p"])), "#{what} #{i}: #{row}")
    Integer(row["p"])
  end

  step("ruby-pg: exec_params in autocommit on replicas") do
    reach_both_replicas(20, "exec_params reads") { |i| replica.call(pg.exec_params(where, [i]), i, "exec_params") }
  end

  step("ruby-pg: prepare/exec_prepared across both replicas, writes and a transaction on the primary") do
    pg.prepare("where", where)
    pg.prepare("insert", "INSERT INTO #{TABLE} (name, v) VALUES ($1, $2) RETURNING v, inet_server_port() AS p")
    reach_both_replicas(40, "exec_prepared reads") { |i| replica.call(pg.exec_prepared("where", [i]), i, "exec_prepared") }
    10.times do |i|
      row = pg.exec_prepared("insert", ["raw #{i}", i])[0]
      expect(row == { "v" => i.to_s, "p" => PRIMARY.to_s }, "prepared insert #{i}: #{row}")
      replica.call(pg.exec_prepared("where", [i]), i, "exec_prepared after a prepared insert")
    end
    pg.transaction do
      row = pg.exec_prepared("where", [7])[0]
      expect(row == { "v" => "7", "r" => "f", "p" => PRIMARY.to_s }, "exec_prepared in a transaction: #{row}")
      pg.exec_prepared("insert", ["raw in tx", 99])
    end
    n = pg.exec("SELECT count(*) FROM #{TABLE} WHERE name LIKE 'raw %'").getvalue(0, 0)
    expect(n == "11", "11 rows inserted by the prepared insert, got #{n}")
  end

  step("ruby-pg: a 1 MB parameter") do
    row = pg.exec_params("SELECT length($1::text) AS n, md5($1::text) AS m, pg_is_in_recovery() AS r", [BIG])[0]
    expect(row == { "n" => BIG.length.to_s, "m" => Digest::MD5.hexdigest(BIG), "r" => "t" }, "1 MB on a replica: #{row}")
    pg.exec_params("INSERT INTO #{TABLE} (name, body) VALUES ('raw big', $1)", [BIG])
    body = pg.exec_params("SELECT body FROM #{TABLE} WHERE name = $1", ["raw big"]).getvalue(0, 0)
    expect(body == BIG, "1 MB body read back by ruby-pg: length #{body&.length}")
  end

  step("ruby-pg: BEGIN READ ONLY on a replica, a write fails with 25006 then 25P02, ROLLBACK, recovery") do
    pg.exec("BEGIN READ ONLY")
    replica.call(pg.exec_prepared("where", [1]), 1, "exec_prepared in BEGIN READ ONLY")
    codes = []
    ["INSERT INTO #{TABLE} (name) VALUES ('raw read-only')", "SELECT 1"].each do |sql|
      pg.exec(sql)
    rescue PG::Error => e
      codes << sqlstate(e)
    end
    begin
      pg.exec_prepared("where", [2])
    rescue PG::Error => e
      codes << sqlstate(e)
    end
    expect(codes == %w[25006 25P02 25P02], "a write refused with 25006, then 25P02 twice: #{codes}")
    pg.exec("ROLLBACK")
    replica.call(pg.exec_prepared("where", [3]), 3, "exec_prepared after the ROLLBACK")
    row = pg.exec_prepared("insert", ["raw after error", 3])[0]
    expect(row["p"] == PRIMARY.to_s, "a write after the ROLLBACK ran on #{row['p']}")
    n = pg.exec("SELECT count(*) FROM #{TABLE} WHERE name LIKE 'raw %'").getvalue(0, 0)
    expect(n == "13", "the refused write left no row: 13 raw rows, got #{n}")
  end
ensure
  pg&.close
end

main
