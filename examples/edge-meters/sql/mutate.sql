/*
 * A change of configuration in the cloud, for the walkthrough: the next edge
 * cycle pulls it. acme's meter 3 moves (an update of two fields), meter 21
 * is installed with two registers, meter 20 loses its current register, and
 * meter 22 arrives with a malformed serial number, so the edge quarantines it
 * (the meters entity's validate rule) and, for want of their parent, its
 * register assignments. Idempotent.
 */
update meters set location = 'Building 9, floor 1', model = 'AM550', updated_at = now()
 where tenant_id = 'acme' and meter_id = 3 and location <> 'Building 9, floor 1';

insert into meters (tenant_id, meter_id, serial_no, model, location) values
  ('acme', 21, 'ACM-000021', 'E350', 'Building 3, floor 2'),
  ('acme', 22, 'acm 22', 'E350', 'Building 3, floor 3')
on conflict do nothing;

insert into device_register (tenant_id, meter_id, register_id, channel) values
  ('acme', 21, 1, 1), ('acme', 21, 2, 2), ('acme', 22, 1, 1)
on conflict do nothing;

delete from device_register where tenant_id = 'acme' and meter_id = 20 and register_id = 4;
