// pgjdbc against a running Eddy: the extended protocol for everything, every type through
// setObject/getObject, NULLs, errors with SQLSTATE, transactions, DatabaseMetaData's
// getTables and getColumns.
// Usage: java -cp postgresql.jar PgJdbcCheck.java JDBC_URL USER PASSWORD
import java.math.BigDecimal;
import java.sql.*;
import java.time.*;
import java.util.*;

public class PgJdbcCheck {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static void expectState(String state, Runnable sql) {
        try {
            sql.run();
        } catch (RuntimeException e) {
            SQLException cause = (SQLException) e.getCause();
            check(state.equals(cause.getSQLState()), "SQLSTATE " + cause.getSQLState() + ": " + cause.getMessage());
            return;
        }
        throw new AssertionError("expected SQLSTATE " + state);
    }

    interface Sql { void run() throws SQLException; }

    static Runnable wrap(Sql s) {
        return () -> {
            try { s.run(); } catch (SQLException e) { throw new RuntimeException(e); }
        };
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            Statement s = c.createStatement();
            s.execute("DROP TABLE IF EXISTS jdbc_types");
            s.execute("CREATE TABLE jdbc_types (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, "
                + "i8 bigint, f4 real, f8 double precision, num numeric(10,3), t text, vc varchar(20), "
                + "ba bytea, d date, ts timestamp, tsz timestamptz, u uuid)");
            UUID uuid = UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
            LocalDateTime ts = LocalDateTime.of(2024, 5, 1, 12, 30, 15, 250_000_000);
            OffsetDateTime tsz = ts.atOffset(ZoneOffset.UTC);
            try (PreparedStatement p = c.prepareStatement(
                    "INSERT INTO jdbc_types VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")) {
                p.setInt(1, 1);
                p.setBoolean(2, true);
                p.setShort(3, (short) -12);
                p.setInt(4, 123456);
                p.setLong(5, 9_000_000_000L);
                p.setFloat(6, 1.5f);
                p.setDouble(7, 2.718281828459045);
                p.setBigDecimal(8, new BigDecimal("12345.678"));
                p.setString(9, "héllo, wörld");
                p.setString(10, "short");
                p.setBytes(11, new byte[] {0, 1, (byte) 254, (byte) 255});
                p.setObject(12, LocalDate.of(2024, 2, 29));
                p.setObject(13, ts);
                p.setObject(14, tsz);
                p.setObject(15, uuid);
                check(p.executeUpdate() == 1, "one row inserted");
                p.setInt(1, 2);
                int[] sqlTypes = {Types.BOOLEAN, Types.SMALLINT, Types.INTEGER, Types.BIGINT, Types.REAL,
                    Types.DOUBLE, Types.NUMERIC, Types.VARCHAR, Types.VARCHAR, Types.BINARY, Types.DATE,
                    Types.TIMESTAMP, Types.TIMESTAMP_WITH_TIMEZONE, Types.OTHER};
                for (int i = 0; i < sqlTypes.length; i++) p.setNull(i + 2, sqlTypes[i]);
                check(p.executeUpdate() == 1, "a row of NULLs inserted");
            }
            try (PreparedStatement p = c.prepareStatement("SELECT * FROM jdbc_types WHERE id = ?")) {
                p.setInt(1, 1);
                ResultSet r = p.executeQuery();
                check(r.next(), "row 1");
                check(r.getBoolean("b"), "b");
                check(r.getShort("i2") == -12, "i2");
                check(r.getInt("i4") == 123456, "i4");
                check(r.getLong("i8") == 9_000_000_000L, "i8");
                check(r.getFloat("f4") == 1.5f, "f4");
                check(r.getDouble("f8") == 2.718281828459045, "f8");
                check(r.getBigDecimal("num").equals(new BigDecimal("12345.678")), "num " + r.getBigDecimal("num"));
                check(r.getString("t").equals("héllo, wörld"), "t");
                check(r.getString("vc").equals("short"), "vc");
                check(Arrays.equals(r.getBytes("ba"), new byte[] {0, 1, (byte) 254, (byte) 255}), "ba");
                check(r.getObject("d", LocalDate.class).equals(LocalDate.of(2024, 2, 29)), "d");
                check(r.getObject("ts", LocalDateTime.class).equals(ts), "ts " + r.getObject("ts", LocalDateTime.class));
                check(r.getObject("tsz", OffsetDateTime.class).toInstant().equals(tsz.toInstant()), "tsz");
                check(r.getObject("u", UUID.class).equals(uuid), "u");
                p.setInt(1, 2);
                r = p.executeQuery();
                check(r.next(), "row 2");
                for (int i = 2; i <= 15; i++) {
                    r.getObject(i);
                    check(r.wasNull(), "column " + i + " is NULL");
                }
            }
            // Errors carry their SQLSTATE.
            expectState("23505", wrap(() -> s.execute("INSERT INTO jdbc_types (id) VALUES (1)")));
            expectState("42P01", wrap(() -> s.executeQuery("SELECT * FROM no_such_table")));
            // Transactions.
            c.setAutoCommit(false);
            s.execute("INSERT INTO jdbc_types (id, t) VALUES (3, 'gone')");
            c.rollback();
            s.execute("INSERT INTO jdbc_types (id, t) VALUES (4, 'kept')");
            c.commit();
            c.setAutoCommit(true);
            ResultSet r = s.executeQuery("SELECT string_agg(t, ',') FROM jdbc_types WHERE id IN (3, 4)");
            check(r.next() && r.getString(1).equals("kept"), "transactions");
            // DatabaseMetaData.
            DatabaseMetaData meta = c.getMetaData();
            check(meta.getDatabaseProductName().equals("PostgreSQL"), meta.getDatabaseProductName());
            List<String> tables = new ArrayList<>();
            r = meta.getTables(null, "public", "%", new String[] {"TABLE"});
            while (r.next()) tables.add(r.getString("TABLE_NAME"));
            check(tables.contains("jdbc_types"), "getTables: " + tables);
            List<String> columns = new ArrayList<>();
            r = meta.getColumns(null, "public", "jdbc_types", "%");
            while (r.next()) columns.add(r.getString("COLUMN_NAME") + ":" + r.getString("TYPE_NAME"));
            check(columns.size() == 15 && columns.get(0).equals("id:int4") && columns.get(14).equals("u:uuid"),
                "getColumns: " + columns);
            s.execute("DROP TABLE jdbc_types");
        }
        System.out.println("pgjdbc ok");
    }
}
