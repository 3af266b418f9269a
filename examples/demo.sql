-- The demo pipeline the Grafana dashboard in docker/grafana/ shows: generated machine
-- readings, scored by an ONNX model as they arrive, and summarised in 10-second windows.
-- Run it from the repository root: psql -h 127.0.0.1 -U eddy -f examples/demo.sql

CREATE SOURCE machines (id bigint NOT NULL, machine int, temperature real, vibration real,
    ts timestamptz, WATERMARK FOR ts AS ts - INTERVAL '2 seconds')
  WITH (connector = 'datagen', rows_per_second = '20',
        fields.id.kind = 'sequence', fields.machine.min = '1', fields.machine.max = '3',
        fields.temperature.min = '40', fields.temperature.max = '90',
        fields.vibration.min = '0', fields.vibration.max = '4');

CREATE MODEL anomaly FROM 'examples/models/anomaly_v1.onnx'
  WITH (features = 'temperature, vibration');

-- Every reading with its anomaly score.
CREATE STREAM scored AS
  SELECT id, machine, temperature, vibration, ts,
         PREDICT('anomaly', temperature => temperature, vibration => vibration) AS score
  FROM machines;

-- Per machine and 10-second window: readings, mean temperature, peak vibration.
CREATE MATERIALIZED VIEW machine_10s AS
  SELECT machine, window_start, window_end, count(*) AS n,
         avg(temperature) AS avg_temperature, max(vibration) AS max_vibration
  FROM TUMBLE(machines, ts, INTERVAL '10 seconds')
  GROUP BY machine, window_start, window_end;
