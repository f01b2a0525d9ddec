/*
 * Simulated activity on the remote, for the demo: in every tenant a few
 * meters change (firmware, on/off) with updated_at bumped, some readings move
 * on, one meter is installed with its billing registers, one meter ↔ register
 * assignment is removed, and now and then a register definition or a
 * tenant's settings change. One statement, so it commits all or nothing.
 *
 * `npm start` runs it every minute against the demo database; run it by hand
 * with `psql "$REMOTE_DATABASE_URL" -f examples/remote-postgres/mutate.sql`.
 */
do $$
declare
  v_tenant text;
  v_meter bigint;
begin
  for v_tenant in select tenant_id from tenants order by tenant_id loop
    update meters m
       set attributes = m.attributes || jsonb_build_object('firmware',
             format('%s.%s.%s', 4 + floor(random() * 3)::int, floor(random() * 10)::int, floor(random() * 7)::int)),
           is_active = case when random() < 0.2 then not m.is_active else m.is_active end,
           updated_at = now()
     where m.tenant_id = v_tenant
       and m.meter_id in (select meter_id from meters where tenant_id = v_tenant
                           order by random() limit 1 + floor(random() * 3)::int);

    update device_register d
       set last_reading = coalesce(d.last_reading, 0) + round((random() * 50)::numeric, 3),
           updated_at = now()
     where d.tenant_id = v_tenant
       and (d.meter_id, d.register_id) in (select meter_id, register_id from device_register where tenant_id = v_tenant
                                            order by random() limit 2 + floor(random() * 4)::int);

    insert into meters (tenant_id, meter_id, serial_no, manufacturer, model, installed_on, location, attributes)
    select v_tenant, n, format('%s-%s', upper(left(v_tenant, 3)), lpad(n::text, 6, '0')),
           (array['Landis+Gyr', 'Itron', 'Kamstrup', 'Iskraemeco'])[1 + n % 4],
           (array['E360', 'SL7000', 'Omnipower', 'AM550', 'E450'])[1 + (n * 7) % 5],
           current_date, format('New Development %s', n),
           jsonb_build_object('phases', 1, 'comms', 'lte', 'firmware', '6.0.0')
      from (select coalesce(max(meter_id), 0) + 1 as n from meters where tenant_id = v_tenant) x
    returning meter_id into v_meter;
    insert into device_register (tenant_id, meter_id, register_id, channel, is_billing, installed_at, last_reading)
    select v_tenant, v_meter, r.register_id, row_number() over (order by r.register_id), true, now(), 0
      from registers r where r.tenant_id = v_tenant and r.register_id <= 4;

    delete from device_register
     where ctid = (select ctid from device_register where tenant_id = v_tenant and meter_id <> v_meter
                    order by random() limit 1);

    if random() < 0.25 then
      update registers
         set attrs = attrs || jsonb_build_object('reviewed_at', now()), updated_at = now()
       where tenant_id = v_tenant
         and register_id = (select register_id from registers where tenant_id = v_tenant order by random() limit 1);
    end if;
    if random() < 0.1 then
      update tenants set settings = settings || jsonb_build_object('last_billing_run', now()), updated_at = now()
       where tenant_id = v_tenant;
    end if;
  end loop;
end
$$;
