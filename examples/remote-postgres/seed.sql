/*
 * Demo data for remote.sql: three tenants of different sizes, their meters,
 * a dozen register definitions each, and the meter ↔ register assignments
 * (about 6,000 rows in all). Set-based (generate_series), deterministic (no
 * random()), and `on conflict do nothing`, so running it twice changes nothing.
 *
 * updated_at values are spread seven minutes apart in 2025, so an incremental
 * read after a change fetches just the changed rows (plus the overlap window).
 */

insert into tenants (tenant_id, name, timezone, settings, created_at, updated_at)
values
  ('acme',    'Acme Power & Light',     'Europe/Amsterdam', '{"billing_cycle": "monthly", "currency": "EUR"}', '2024-03-01 09:00+00', '2025-01-01 00:00+00'),
  ('globex',  'Globex Utilities',       'America/Chicago',  '{"billing_cycle": "monthly", "currency": "USD"}', '2024-05-12 15:30+00', '2025-01-01 00:00+00'),
  ('initech', 'Initech Energy Services','Asia/Singapore',   '{"billing_cycle": "quarterly", "currency": "SGD"}', '2024-09-20 02:00+00', '2025-01-01 00:00+00')
on conflict do nothing;

insert into registers (tenant_id, register_id, obis_code, description, unit, multiplier, is_cumulative, attrs, updated_at)
select t.tenant_id, r.register_id, r.obis_code, r.description, r.unit, r.multiplier, r.is_cumulative,
       jsonb_build_object('class', r.class, 'decimals', r.decimals),
       timestamptz '2025-01-01 00:00+00' + r.register_id * interval '1 hour'
  from tenants t
 cross join (values
   (1,  '1.8.0',  'Active energy import, total',   'kWh',   1.0,   true,  'energy', 3),
   (2,  '2.8.0',  'Active energy export, total',   'kWh',   1.0,   true,  'energy', 3),
   (3,  '1.8.1',  'Active energy import, tariff 1', 'kWh',  1.0,   true,  'energy', 3),
   (4,  '1.8.2',  'Active energy import, tariff 2', 'kWh',  1.0,   true,  'energy', 3),
   (5,  '3.8.0',  'Reactive energy import, total', 'kvarh', 1.0,   true,  'energy', 3),
   (6,  '4.8.0',  'Reactive energy export, total', 'kvarh', 1.0,   true,  'energy', 3),
   (7,  '1.7.0',  'Active power import',           'kW',    0.001, false, 'power',  3),
   (8,  '2.7.0',  'Active power export',           'kW',    0.001, false, 'power',  3),
   (9,  '32.7.0', 'Voltage L1',                    'V',     0.1,   false, 'quality', 1),
   (10, '31.7.0', 'Current L1',                    'A',     0.01,  false, 'quality', 2),
   (11, '14.7.0', 'Supply frequency',              'Hz',    0.01,  false, 'quality', 2),
   (12, '13.7.0', 'Power factor',                  '',      0.001, false, 'quality', 3)
 ) as r(register_id, obis_code, description, unit, multiplier, is_cumulative, class, decimals)
on conflict do nothing;

insert into meters (tenant_id, meter_id, serial_no, manufacturer, model, installed_on, location,
                    latitude, longitude, is_active, attributes, updated_at)
select t.tenant_id, g,
       format('%s-%s', upper(left(t.tenant_id, 3)), lpad(g::text, 6, '0')),
       (array['Landis+Gyr', 'Itron', 'Kamstrup', 'Iskraemeco'])[1 + g % 4],
       (array['E360', 'SL7000', 'Omnipower', 'AM550', 'E450'])[1 + (g * 7) % 5],
       date '2018-01-01' + (g * 37) % 2500,
       format('%s %s, unit %s', (array['Harbour Road', 'Mill Lane', 'Station Street', 'Canal Quay', 'Orchard Way'])[1 + g % 5],
              1 + (g * 13) % 240, 1 + g % 12),
       round((t.lat + ((g * 7919) % 10000) / 100000.0)::numeric, 6),
       round((t.lon + ((g * 104729) % 10000) / 100000.0)::numeric, 6),
       g % 17 <> 0,
       jsonb_build_object('phases', case when g % 3 = 0 then 3 else 1 end,
                          'comms', (array['lte', 'plc', 'lora'])[1 + g % 3],
                          'firmware', format('%s.%s.%s', 4 + g % 3, g % 10, g % 7)),
       timestamptz '2025-01-01 00:00+00' + g * interval '7 minutes'
  from (values ('acme', 500, 52.37, 4.89), ('globex', 300, 41.88, -87.63), ('initech', 200, 1.35, 103.82))
       as t(tenant_id, n, lat, lon)
 cross join lateral generate_series(1, t.n) g
on conflict do nothing;

-- Every meter has registers 1-4 (import/export, two tariffs) and a share of
-- the others; three-phase meters (phases = 3) also expose power and quality.
insert into device_register (tenant_id, meter_id, register_id, channel, is_billing, installed_at, last_reading, attributes, updated_at)
select m.tenant_id, m.meter_id, r.register_id,
       row_number() over (partition by m.tenant_id, m.meter_id order by r.register_id),
       r.register_id <= 4,
       m.installed_on + time '08:00' + r.register_id * interval '1 minute',
       case when r.is_cumulative then ((m.meter_id * 7919 + r.register_id * 104729) % 9000000) / 100.0
            else ((m.meter_id * 31 + r.register_id * 17) % 5000) / 10.0 end,
       case when r.register_id <= 4 then jsonb_build_object('tariff', case r.register_id when 3 then 'day' when 4 then 'night' else 'any' end) end,
       m.updated_at + r.register_id * interval '1 second'
  from meters m
  join registers r on r.tenant_id = m.tenant_id
 where r.register_id <= 4
    or ((m.attributes ->> 'phases')::int = 3 and r.register_id in (7, 9, 10, 12))
    or (m.meter_id + r.register_id) % 5 = 0
on conflict do nothing;
