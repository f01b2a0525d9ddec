/*
 * Demo configuration for the cloud of the "Edge ⇄ cloud" example: two
 * tenants, acme with 20 meters and globex with 10, four registers each, every
 * meter exposing every register. Deterministic; inserts only what is
 * missing, so running it again changes nothing.
 */
insert into tenants (tenant_id, name, timezone) values
  ('acme', 'Acme Power', 'Europe/Berlin'),
  ('globex', 'Globex Utilities', 'America/Chicago')
on conflict do nothing;

insert into registers (tenant_id, register_id, obis_code, unit, multiplier)
select t, r.id, r.obis, r.unit, r.mult
  from unnest(array['acme', 'globex']) t,
       (values (1, '1.8.0', 'kWh', 1), (2, '2.8.0', 'kWh', 1), (3, '32.7.0', 'V', 0.1), (4, '31.7.0', 'A', 0.01)) r(id, obis, unit, mult)
on conflict do nothing;

insert into meters (tenant_id, meter_id, serial_no, model, location)
select t.tenant_id, m, format('%s-%s', upper(left(t.tenant_id, 3)), lpad((m * 7919 % 1000000)::text, 6, '0')),
       (array['E350', 'AM550', 'MT382'])[1 + m % 3], format('Building %s, floor %s', 1 + m / 10, m % 10)
  from (values ('acme', 20), ('globex', 10)) t(tenant_id, n), generate_series(1, t.n) m
on conflict do nothing;

insert into device_register (tenant_id, meter_id, register_id, channel)
select m.tenant_id, m.meter_id, r.register_id, r.register_id
  from meters m join registers r using (tenant_id)
on conflict do nothing;
